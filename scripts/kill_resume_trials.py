"""Many kill -9 trials against a real ``archlab train`` process; each resumed run must equal an uninterrupted one.

    python scripts/kill_resume_trials.py --trials 12 --out runs/kill_trials

Every trial trains the same small run in a fresh directory as ``python -m archlab.cli train ...`` and kills
it with SIGKILL 1-3 times at random moments: once the metrics show a random step s, after a random delay of
up to two step-times, so kills land inside steps and inside checkpoint writes (ckpt_every=1). After each
kill it records where the kill landed (a ``.tmp_step_N`` folder = inside the write of checkpoint N), then
relaunches the same command, which resumes from the newest intact checkpoint; the last launch runs to the
end. The trial passes when its per-step losses and final weights are bit-identical to the reference run.
Exit code 0 only if all trials pass; a JSON summary goes to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN = [
    "model.d_model=64", "model.n_layers=2", "model.mixer.n_heads=2", "train.seq_len=64", "train.batch_size=8",
    "train.log_every=1", "train.ckpt_every=1", "train.keep_last=2", "train.eval_batches=1", "train.threads=1",
    "optim.lr=3e-3", "optim.warmup_steps=3",
]


def command(out: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "archlab.cli", "train", *RUN, f"train.steps={steps}", f"out_dir={out}", f"name={name}"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "1"}


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return rows


def final_model(run_dir: Path) -> bytes:
    ckpts = sorted((p for p in run_dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name[5:]))
    return (ckpts[-1] / "model.safetensors").read_bytes()


def where(run_dir: Path) -> str:
    """Where the kill landed, read from what it left on disk."""
    tmp = sorted(run_dir.glob(".tmp_step_*"))
    done = len(metrics(run_dir))
    if tmp:
        files = sorted(p.name for p in tmp[0].iterdir()) if tmp[0].is_dir() else []
        return f"checkpoint {tmp[0].name[10:]} write ({'+'.join(files) or 'empty folder'})"
    return f"after step {done} logged"


def kill_once(cmd: list[str], run_dir: Path, at_step: int, delay: float) -> str | None:
    """Launch, wait for ``at_step`` logged steps + ``delay`` s, kill -9. None if it finished first."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(metrics(run_dir)) < at_step and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return where(run_dir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/kill_trials"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    ref_dir = args.out / "reference"
    if not (ref_dir / "eval.json").exists():
        subprocess.run(command(args.out, "reference", args.steps), env=env(), check=True, capture_output=True)
    ref_losses, ref_model = [m["loss"] for m in metrics(ref_dir)], final_model(ref_dir)
    step_time = sum(m["step_time"] for m in metrics(ref_dir)) / args.steps

    results = []
    for t in range(args.trials):
        name = f"trial_{t}"
        run_dir = args.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = command(args.out, name, args.steps)
        kills = []
        for _ in range(rng.randint(1, 3)):
            logged = len(metrics(run_dir))
            if logged + 1 > args.steps - 1:
                break
            landed = kill_once(cmd, run_dir, rng.randint(logged + 1, args.steps - 1), rng.uniform(0, 2 * step_time))
            if landed:
                kills.append(landed)
        final = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        losses = [m["loss"] for m in metrics(run_dir)]
        ok = final.returncode == 0 and losses == ref_losses and final_model(run_dir) == ref_model
        results.append({"trial": t, "kills": kills, "identical": ok, "returncode": final.returncode})
        print(f"trial {t:2d}: {'IDENTICAL' if ok else 'DIFFERENT'}  kills: {'; '.join(kills) or 'none (finished first)'}", flush=True)

    n_ok = sum(r["identical"] for r in results)
    n_kills = sum(len(r["kills"]) for r in results)
    in_write = sum("write" in k for r in results for k in r["kills"])
    print(f"{n_ok}/{len(results)} trials bit-identical to the uninterrupted run; {n_kills} kills, {in_write} inside a checkpoint write")
    (args.out / "summary.json").write_text(json.dumps({"identical": n_ok, "trials": len(results), "kills": n_kills,
                                                       "kills_in_checkpoint_write": in_write, "results": results}, indent=2))
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
