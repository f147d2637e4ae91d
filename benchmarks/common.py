"""Shared pieces of the benchmarks: interleaved timing, peak-memory probes, and the result file.

Result file (``--json PATH`` on every benchmark; diff two with ``benchmarks/compare.py``)::

    {"schema": 1, "benchmark": "train_throughput",
     "meta": {"date", "git_commit", "machine", "cpu", "torch", "threads", "load_avg", "argv"},
     "lower_is_better": ["canon_overhead_pct", ...],       # every other metric: higher is better
     "rows": [{"key": {"size": "d=256 L=8 T=256 B=16", "precision": "fp32"},
               "metrics": {"archlab_tok_s": 812.0, "hf_tok_s": 601.0, "ratio": 1.35, ...}}]}

A row is identified by its ``key``; ``compare.py`` matches rows of two files by key and metrics by name.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

SCHEMA = 1


def interleaved_times(fns: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds of each call of each function; the functions take turns call by call, so a busy machine
    slows them alike and the ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def sync(device: object) -> None:
    """Wait for the kernels queued on ``device`` (CUDA runs them asynchronously), so a timer measures the work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: object) -> Callable[[], None]:
    """``fn`` followed by :func:`sync`: a function that :func:`time_interleaved` can time on any device."""

    def call() -> None:
        fn()
        sync(device)

    return call


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, timed by :func:`interleaved_times`."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, warmup, reps).items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_features() -> dict:
    """The CPU features that decide CPU training speed: AVX-512, native bf16 (AVX512-BF16, AMX), and what torch
    makes of them (its dispatch capability; whether oneDNN has fast bf16 kernels)."""
    import torch

    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"flags": [f for f in SIMD_FLAGS if f in flags], "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def cpu_kind() -> str:
    """'native-bf16' (AVX512-BF16 or AMX) or 'no-bf16': the two CPU kinds the README reports separately."""
    return "native-bf16" if {"avx512_bf16", "amx_bf16"} & set(cpu_features()["flags"]) else "no-bf16"


def meta() -> dict:
    """Where and when a result was measured (the load average says how busy the shared machine was)."""
    import torch  # here, not at the top: compare.py reads result files without torch

    from archlab.runinfo import git_commit

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_kind": cpu_kind(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "argv": sys.argv,
    }


def write_result(path: str | None, benchmark: str, rows: list[dict], lower_is_better: list[str]) -> None:
    """Write the result file (if ``path``); rows: [{"key": {...}, "metrics": {...}}]."""
    if not path:
        return
    doc = {"schema": SCHEMA, "benchmark": benchmark, "meta": meta(), "lower_is_better": lower_is_better, "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {path}")


def parse_run_args(ap, threads: int, reps: int):
    """Parse ``ap`` with the options every timing benchmark shares (--threads, --reps, --json) and set torch's
    thread count."""
    import torch

    ap.add_argument("--threads", type=int, default=threads, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--reps", type=int, default=reps, help="timed steps per entrant (median reported)")
    ap.add_argument("--json", help="write a result file (benchmarks/common.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ------------------------------------------------------------------------------------------------- memory


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def peak_growth_mib(step: Callable[[], object]) -> float:
    """MiB of peak RSS growth during one call of ``step`` (call it once before, as a warm-up).

    glibc's mmap threshold is pinned at 64 KiB so that freed tensors go back to the OS (the figure tracks
    live tensor memory, not allocator caches), and the heap's free pages are returned before measuring
    (malloc_trim): glibc serves even large requests from free heap chunks before it maps new memory, so free
    pages left resident by earlier work in the process would hide the step's growth. VmHWM is reset through
    /proc/self/clear_refs. A fresh process per measurement is still the cleanest.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    step()
    libc.malloc_trim(0)
    before, _ = rss_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step()
    return rss_mib()[1] - before


def cuda_peak_growth_mib(step: Callable[[], object], device: object) -> float:
    """MiB of peak CUDA memory allocated during one call of ``step`` above what was allocated before it (call
    it once before, as a warm-up): activations, gradients and temporaries, as :func:`peak_growth_mib` on CPU."""
    import torch

    step()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def step_peak_mib(step: Callable[[], object], device: object) -> float:
    """Peak memory growth of one call of ``step`` on ``device``: CUDA allocator statistics, or RSS on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return cuda_peak_growth_mib(step, device)
    return peak_growth_mib(step)
