"""Data-generation throughput of the synthetic tasks: tokens/s of ``task.batch`` (generate + pack + tensors).

Each task runs with the batch size and window of its ``configs/<task>_tiny.yaml`` (and, with --paper, of its
``<task>_paper.yaml``), single process. For scale: a tiny model trains at roughly 20-50k tokens/s on 2 CPU
cores, so generation should run at >= 1M tokens/s to cost under 5% of a step.

    python benchmarks/data_throughput.py [--seconds 3] [--paper]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from archlab.tasks import TASKS, build_task

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = ("depo", "brevo", "capo", "mano", "lano")


def measure(recipe: Path, seconds: float) -> tuple[int, int, float, float, float]:
    """(batch_size, seq_len, ms per batch, tokens per wall second, tokens per CPU second) of the recipe's task.

    CPU seconds (this process's user + system time) do not count time lost to other processes on a shared box.
    """
    tree = yaml.safe_load(recipe.read_text())
    train = tree.get("train", {})
    batch_size, seq_len = int(train.get("batch_size", 16)), int(train.get("seq_len", 256))
    task = build_task(TASKS.validate(tree["data"]), seq_len)
    task.batch("train", 0, 0, 0, batch_size)  # warm-up (lazy tables)
    step, t0, c0 = 1, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        task.batch("train", 0, 0, step, batch_size)
        step += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = (step - 1) * batch_size * (seq_len + 1)
    return batch_size, seq_len, wall / (step - 1) * 1e3, tokens / wall, tokens / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per task")
    ap.add_argument("--paper", action="store_true", help="also the paper-sized recipes")
    args = ap.parse_args()
    kinds = ("tiny", "paper") if args.paper else ("tiny",)
    print(f"{'recipe':<14}{'batch':>7}{'T':>6}{'ms/batch':>10}{'tokens/s':>14}{'tokens/CPU-s':>14}")
    for kind in kinds:
        for name in TASK_NAMES:
            recipe = ROOT / "configs" / f"{name}_{kind}.yaml"
            b, t, ms, tps, tpc = measure(recipe, args.seconds)
            print(f"{recipe.stem:<14}{b:>7}{t:>6}{ms:>10.2f}{tps:>14,.0f}{tpc:>14,.0f}")


if __name__ == "__main__":
    main()
