"""The machine a check ran on, and the bf16 peak that model FLOP utilisation (MFU) is measured against.

The peak is the datasheet's dense bf16 tensor-core rate for known GPUs (no sparsity), else the rate of a large
bf16 matmul measured here (on CPU: an fp32 one, so that the dry run's MFU column is a number too).
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time

import torch

from common import cpu_name, meta

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s); the first match wins, so specific names first
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),  # the H100's chip with more memory: same tensor-core rate
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
]
OPTIONAL = ("transformers", "triton", "flash-linear-attention", "fla-core", "pydantic")


def table_peak(gpu_name: str) -> float | None:
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in gpu_name), None)


def measured_matmul_tflops(device: torch.device, n: int, reps: int = 10) -> float:
    """TFLOP/s of an n x n x n matmul (bf16 on CUDA, fp32 on CPU), the best of ``reps`` after warm-ups."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for i in range(reps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def peak_tflops(device: torch.device) -> tuple[float, str, float]:
    """(peak used for MFU, where it comes from, the measured matmul rate)."""
    measured = measured_matmul_tflops(device, 8192 if device.type == "cuda" else 512)
    table = table_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if table is not None:
        return table, "datasheet dense bf16", measured
    return measured, "measured matmul (GPU not in the table)" if device.type == "cuda" else "measured fp32 matmul (CPU)", measured


def versions() -> dict[str, str | None]:
    found = {}
    for name in OPTIONAL:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine_info(device: torch.device) -> dict:
    """Where and with what the check ran (benchmarks/common.meta plus the GPU, CUDA and optional packages)."""
    info = meta() | {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"device": torch.cuda.get_device_name(device), "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                 "gpu_memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                 "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    else:
        info |= {"device": f"cpu ({cpu_name()})", "cuda": None}
    return info
