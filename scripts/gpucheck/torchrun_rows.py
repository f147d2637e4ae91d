"""Section 4: ``torchrun --nproc_per_node=1`` with ``train.parallel=ddp`` and ``fsdp`` on the device's backend
(nccl on CUDA, gloo in the dry run): a few steps, a DCP checkpoint, a resume from it, and losses equal to a plain
single-process run of the same config.

One torchrun launch (its start-up costs 20-40 s on a GPU machine) trains every run; each row reads its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from archlab.checkpoint import MODEL_FILE
from archlab.distributed import DCP_DIR
from archlab.train import read_metrics
from gpucheck.rows import Context, Outcome, RowSpec
from gpucheck.runs import ROOT, Shape, losses, run_name

NAME, TITLE = "torchrun", "torchrun --nproc_per_node=1: DDP / FSDP2, DCP checkpoint, resume"
BUDGET_S = {"full": 80, "quick": 60, "dry-run": 300}
MODES = ("ddp", "fsdp")
TOL = 1e-3  # nats: one process, so only kernel nondeterminism separates a wrapped run from the plain one
WORKER = Path(__file__).with_name("dist_worker.py")


@dataclass(frozen=True)
class Sizes:
    shape: Shape
    steps: int
    stop_after: int  # the first launch's runs stop (and checkpoint) here; the second call resumes


GPU = Sizes(Shape(256, 2, 256, 8), steps=4, stop_after=2)
SIZES = {"full": GPU, "quick": GPU, "dry-run": Sizes(Shape(32, 2, 32, 4), steps=4, stop_after=2)}


def overrides(s: Sizes, parallel: str) -> list[str]:
    return [*s.shape.overrides(), f"train.steps={s.steps}", f"train.parallel={parallel}", "optim.lr=3e-3"]


EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]: )?([\w.]*(?:Error|Exception)\b.*: \S.*)$")


def root_cause(stderr: str) -> str:
    """The worker's exception line (``[rank0]: archlab.config.ConfigError: ...``) from torchrun's stderr, not
    the agent's ChildFailedError report; else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    causes = [m.group(1) for ln in lines if (m := EXCEPTION_LINE.match(ln)) and "ChildFailedError" not in ln]
    return causes[-1] if causes else (lines[-1] if lines else "no output")


def launch(ctx: Context) -> float:
    """Train the plain reference and, per mode, a run stopped at ``stop_after`` then resumed; seconds taken."""
    s = SIZES[ctx.mode]
    runs = [{"label": "reference", "overrides": overrides(s, "none")}]
    for mode in MODES:
        runs += [{"label": mode, "overrides": overrides(s, mode), "stop_after": s.stop_after},
                 {"label": mode, "overrides": overrides(s, mode)}]
    path = os.pathsep.join([str(ROOT), str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(WORKER),
           str(ctx.work / "torchrun"), json.dumps(runs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
                          timeout=BUDGET_S[ctx.mode] * 2)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {root_cause(proc.stderr)}")
    return time.perf_counter() - t0


_launched: dict[Context, float | Exception] = {}


def launched(ctx: Context) -> float:
    """:func:`launch` once per context, for every row; a failed launch fails every row with its error."""
    if ctx not in _launched:
        try:
            _launched[ctx] = launch(ctx)
        except Exception as err:  # noqa: BLE001 -- kept for the other rows, raised for each
            _launched[ctx] = err
    if isinstance(result := _launched[ctx], Exception):
        raise result
    return result


def check(mode: str, ctx: Context) -> Outcome:
    seconds = launched(ctx)
    s, runs = SIZES[ctx.mode], ctx.work / "torchrun"
    run, ref = runs / run_name(mode), losses(read_metrics(runs / "reference"))
    info = json.loads((run / "run.json").read_text())
    got = losses(read_metrics(run))
    final = run / f"step_{s.steps}"
    shards = sorted((final / DCP_DIR).glob("*.distcp"))
    expected = "nccl" if ctx.device.type == "cuda" else "gloo"
    diff = max(abs(a - b) for a, b in zip(got, ref))
    problems = [f"process group {info.get('process_group')!r}, expected {expected!r}"] if info.get("process_group") != expected else []
    problems += [f"resumed from step {info.get('resumed_from_step')}, expected {s.stop_after}"] if info.get("resumed_from_step") != s.stop_after else []
    problems += [f"{final}: no DCP shards or no {MODEL_FILE}"] if not shards or not (final / MODEL_FILE).is_file() else []
    problems += [f"{len(got)} logged steps, expected {s.steps}"] if len(got) != s.steps else []
    problems += [f"losses differ from the plain run by {diff:.1e} > {TOL:.0e}"] if diff > TOL else []
    numbers = {"max_loss_diff": diff, "final_loss": got[-1], "dcp_shards": len(shards), "launch_s": seconds}
    return Outcome(not problems, numbers, "; ".join(problems))


def specs(ctx: Context) -> list[RowSpec]:
    return [RowSpec(mode, partial(check, mode, ctx)) for mode in MODES]
