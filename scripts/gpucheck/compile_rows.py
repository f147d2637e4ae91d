"""Section 3: ``train.compile=true`` on the device: the compiled run's per-step losses equal the eager run's
within tolerance; compile time (first compiled step minus a later one) and the compiled speed-up are reported.

Rows are :class:`~gpucheck.rows.ConfigRow` entries in ``ROWS``; ``quick=False`` rows are left out of ``--quick``
and ``--dry-run``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial

import torch

from archlab.model.compile import has_cpp_compiler
from gpucheck.rows import ConfigRow, Context, Outcome, RowSpec, Skip, selected
from gpucheck.runs import Shape, losses, train_run

NAME, TITLE = "compile", "train.compile=true == eager"
BUDGET_S = {"full": 80, "quick": 45, "dry-run": 300}
# nats, max |loss difference| over the steps; in bf16 inductor keeps some of eager's bf16 roundings in fp32
TOL = {"bf16": 2e-2, "fp32": 1e-4}


@dataclass(frozen=True)
class Sizes:
    shape: Shape
    steps: int
    heads: int
    precision: str


GPU = Sizes(Shape(512, 2, 512, 8), steps=8, heads=8, precision="bf16")
# the dry run compiles tests/test_compile.py's model in fp32, whose graphs inductor's disk cache may already hold
# (CPU inductor's C++ build of new graphs takes ~20-30 s on 2 cores)
SIZES = {"full": GPU, "quick": GPU, "dry-run": Sizes(Shape(32, 2, 32, 4), steps=3, heads=2, precision="fp32")}


ROWS = [
    ConfigRow("attention-rope Canon-ABCD", ["model.mixer.name=attention", "model.canon=ABCD"], quick=True),
    ConfigRow("gla Canon-AbCD", ["model.mixer.name=gla", "model.canon=AbCD"]),
]


def run_overrides(spec: ConfigRow, s: Sizes) -> list[str]:
    return [*s.shape.overrides(), f"model.mixer.n_heads={s.heads}", f"train.steps={s.steps}", "optim.lr=3e-3",
            f"train.precision={s.precision}", *spec.overrides]


def check(spec: ConfigRow, ctx: Context) -> Outcome:
    if ctx.device.type == "cpu" and not has_cpp_compiler():
        raise Skip("torch.compile on CPU needs a C++ compiler (none on PATH)")
    s = SIZES[ctx.mode]
    base = run_overrides(spec, s)
    _, eager = train_run(ctx.work, f"{spec.name} eager", ctx.device, base)
    torch._dynamo.reset()  # compile from scratch: the reported compile time is a first run's (inductor's disk cache aside)
    _, compiled = train_run(ctx.work, f"{spec.name} compiled", ctx.device, [*base, "train.compile=true"])
    diff = max(abs(a - b) for a, b in zip(losses(eager), losses(compiled)))
    eager_s = statistics.median(m["step_time"] for m in eager[1:])
    compiled_s = statistics.median(m["step_time"] for m in compiled[1:])
    numbers = {"max_loss_diff": diff, "compile_s": compiled[0]["step_time"] - compiled_s,
               "eager_step_ms": 1e3 * eager_s, "compiled_step_ms": 1e3 * compiled_s, "speedup": eager_s / compiled_s}
    ok = diff <= TOL[s.precision] and len(eager) == len(compiled) == s.steps
    return Outcome(ok, numbers, "" if ok else f"compiled losses differ from eager by {diff:.2e} > {TOL[s.precision]:.0e} ({s.precision})")


def specs(ctx: Context) -> list[RowSpec]:
    return [RowSpec(r.name, partial(check, r, ctx)) for r in selected(ROWS, ctx.mode)]
