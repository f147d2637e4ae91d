"""Weights laid out for decoding: a token step is a GEMV (batch 1) or a skinny GEMM (a few rows) per matrix,
a stream over every weight byte, so how the weight sits in memory decides the speed.

``F.linear(x, w)`` computes ``x @ w.t()``. For the CPU, :func:`decode_weights` picks by batch size (measured
on the 2-core AVX2 box, a d=256 L=8 Llama's decode step, ``benchmarks/generate_throughput.py``):

* batch 1: the weights stored column-major, so ``w.t()`` is a contiguous [in, out] matrix and MKL runs a
  plain GEMV instead of a transposed one: step 8.1 vs 9.3 ms. Same values and shapes, only the strides
  change (restored on exit), no extra memory;
* batch > 1: a copy of each weight pre-packed in oneDNN's blocked layout (as inductor's CPU freezing does),
  used by :func:`archlab.model.cpu_bf16.linear`: step 11.9 vs 14.1 ms at batch 8 (column-major: 13.6).
  This holds a second copy of the matrix weights while decoding, so models whose matrices exceed
  ``PACK_LIMIT_BYTES`` (or torch builds without oneDNN) use the column-major layout at every batch size.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

PACK_LIMIT_BYTES = 1 << 30  # above this, no packed copies (the column-major layout costs no memory)

_packed: dict[int, torch.Tensor] = {}  # id(weight) -> its oneDNN-packed copy, while decode_weights is active


def _linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Each distinct plain fp32 CPU weight of an ``nn.Linear`` (parametrized ones, e.g. with learnable
    multipliers, are computed per call and left alone; so are DTensors and other tensor subclasses)."""
    found: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if not isinstance(m, nn.Linear) or parametrize.is_parametrized(m, "weight"):
            continue
        w = m.weight
        if type(w.data) is torch.Tensor and w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous():
            found.setdefault(id(w), w)
    return list(found.values())


def _can_pack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """x @ weight.t() (+ bias) by the packed copy of ``weight``, or None where there is none (or autograd,
    autocast or a non-fp32 input needs the ordinary path)."""
    packed = _packed.get(id(weight))
    if packed is None or torch.is_grad_enabled() or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return None
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _pack(weights: list[nn.Parameter], batch: int) -> bool:
    """Put a oneDNN-packed copy of each weight in ``_packed``; False, keeping none, if oneDNN refuses one (an
    optimisation must not stop generation: the caller falls back to the column-major layout)."""
    try:
        for w in weights:
            _packed[id(w)] = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch)
    except RuntimeError:
        for w in weights:
            _packed.pop(id(w), None)
        return False
    return True


@contextmanager
def decode_weights(model: nn.Module, batch: int) -> Iterator[None]:
    """Within: ``model``'s plain fp32 CPU ``nn.Linear`` weights in the layout that decodes ``batch`` rows per
    step fastest (see the module doc). On exit, also on an exception, the model is exactly as before. Enter
    it outside ``torch.inference_mode``: the restored weights must stay normal tensors."""
    weights = _linear_weights(model)
    small = sum(w.numel() * w.element_size() for w in weights) <= PACK_LIMIT_BYTES
    pack = batch > 1 and small and _can_pack() and _pack(weights, batch)
    if not pack:
        with torch.no_grad():
            for w in weights:
                w.data = w.data.t().contiguous().t()
    try:
        yield
    finally:
        with torch.no_grad():
            for w in weights:
                if pack:
                    _packed.pop(id(w), None)
                else:
                    w.data = w.data.contiguous()
