"""GPU readiness: one command that exercises every CUDA path of archlab and reports a table.

    python3 scripts/gpu_check.py --out results/gpu             # the whole check, <= 8 min on one H100 / H200
    python3 scripts/gpu_check.py --quick --out /tmp/gpu        # fewer rows and sizes, <= 3 min
    python3 scripts/gpu_check.py --only train,fla --out DIR    # some sections
    python3 scripts/gpu_check.py --dry-run --out /tmp/dry      # the same code on CPU at tiny sizes (what CI runs)

Sections (each a list of rows; a failing row never stops the others; each section has a time box):
  train       every mixer x Canon off / full set x residual pre / KEEL: 30 bf16 training steps, loss finite and
              falling; cached decoding == full forward within bf16 tolerance
  fla         the mixers' fla path (model.mixer.backend=fla) vs pure torch: output and gradient errors, speed at
              T = 2048 / 8192 (skipped without an importable fla)
  compile     train.compile=true == eager; compile time
  torchrun    torchrun --nproc_per_node=1, train.parallel=ddp / fsdp on nccl: steps, DCP checkpoint, resume
  throughput  tok/s and MFU (bf16 peak: datasheet table by GPU name, else a measured matmul) vs transformers'
              Llama at d=1024 L=16 T=2048 B=8 and d=2048; Canon-ABCD overhead; the mixers at T = 8192
  memory      peak CUDA memory of a training step vs the Llama peer
Writes OUT/gpu_check.json (rows, machine, per-section seconds) and OUT/gpu_check.md (gpu_check_quick.*,
gpu_check_dry_run.* for the other modes); exit code 1 if a row failed, 2 without CUDA (unless --dry-run) or when
archlab cannot be imported.

No network is needed: archlab is read from this checkout (no ``pip install -e``), fla and transformers are used
when importable. A machine without pydantic (or fla) gets wheels carried from a machine with network:

    make gpu-wheels      # pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
                         #   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
                         #   -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions,
                         # and fla-core + flash-linear-attention (py3-none-any), versions pinned in the Makefile
    # on the GPU machine, from the checkout (the .whl folder travels with it):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_check.py --out results/gpu       # or: make gpu-check
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # archlab from this checkout; the benchmarks' helpers

import torch  # noqa: E402

if TYPE_CHECKING:
    from gpucheck.rows import Row

NO_CUDA = "no CUDA device: torch.cuda.is_available() is False; use --dry-run to exercise the script on CPU"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for gpu_check*.json / .md (default results/gpu; dry run: runs/gpu_check)")
    ap.add_argument("--quick", action="store_true", help="fewer rows and sizes (<= 3 min on an H100 / H200)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: the script's own test, no GPU needed")
    ap.add_argument("--only", help="comma-separated sections: train, fla, compile, torchrun, throughput, memory")
    args = ap.parse_args(argv)
    args.out = args.out or ROOT / ("runs/gpu_check" if args.dry_run else "results/gpu")  # a dry run never lands in results/
    return args


def sections() -> list:
    """The section modules in running order (importing them imports archlab, hence pydantic)."""
    from gpucheck import compile_rows, fla_rows, memory_rows, throughput_rows, torchrun_rows, train_rows

    return [train_rows, fla_rows, compile_rows, torchrun_rows, throughput_rows, memory_rows]


def print_row(row: Row) -> None:
    print(f"  [{row.section}] {row.name}: {row.status} ({row.seconds:.1f} s){' - ' + row.message if row.message else ''}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"error: {NO_CUDA}", file=sys.stderr)
        return 2
    try:
        known = sections()
    except ImportError as err:
        print(f"error: cannot import archlab from {ROOT} ({err}); carry the missing wheels (make gpu-wheels, then "
              "pip install --no-index --no-deps --target /tmp/site .whl/*.whl and PYTHONPATH=/tmp/site)", file=sys.stderr)
        return 2
    chosen = [n.strip() for n in (args.only or "").split(",") if n.strip()] or [s.NAME for s in known]
    unknown = sorted(set(chosen) - {s.NAME for s in known})
    if unknown:
        print(f"error: --only: unknown section(s) {', '.join(unknown)}; known: {', '.join(s.NAME for s in known)}", file=sys.stderr)
        return 2
    from gpucheck.machine import machine_info, peak_tflops
    from gpucheck.report import print_table, summary, write
    from gpucheck.rows import Context, run_sections

    mode = "dry-run" if args.dry_run else "quick" if args.quick else "full"
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if args.dry_run:  # tiny ops: one thread (2-thread OpenMP barriers cost 20x on a busy box), torchrun's worker too
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    peak, peak_source, measured = peak_tflops(device)
    info = machine_info(device) | {"bf16_peak_tflops": peak, "bf16_peak_source": peak_source, "measured_matmul_tflops": measured}
    print(f"# gpu check ({mode}): {info['device']}, torch {info['torch']}, CUDA {info['cuda']}, peak {peak:.3g} TFLOP/s ({peak_source})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        rows, timings = run_sections([s for s in known if s.NAME in chosen], Context(mode, device, work, peak), print_row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    path = write(args.out, {"schema": 1, "tool": "gpu_check", "mode": mode, "machine": info, "sections": timings, "total_s": total}, rows)
    counts = summary(rows)
    print_table(rows, f"gpu check ({mode}) on {info['device']}: {counts['pass']} pass, {counts['fail']} fail, "
                      f"{counts['skip']} skip in {total:.0f} s")
    print(f"wrote {path}")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
