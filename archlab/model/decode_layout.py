"""Weights laid out for decoding: a token step is a GEMV per matrix, a stream over every weight byte.

``F.linear(x, w)`` computes ``x @ w.t()``. With ``w`` stored row-major ([out, in], torch's default) the CPU
BLAS runs a transposed GEMV; stored column-major, ``w.t()`` is a contiguous [in, out] matrix and the same
call is a plain one, which MKL streams faster: on the 2-core AVX2 box a d=256 L=8 Llama's decode step spent
~25% less time in its GEMVs at batch 1 (``benchmarks/generate_throughput.py``). Same values, same shapes,
no extra copy kept: only the strides change, and they are restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize


def _linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Each distinct plain CPU weight of an ``nn.Linear`` (parametrized ones, e.g. with learnable multipliers,
    are computed per call and left alone; so are DTensors and other tensor subclasses)."""
    found: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if not isinstance(m, nn.Linear) or parametrize.is_parametrized(m, "weight"):
            continue
        w = m.weight
        if type(w.data) is torch.Tensor and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous():
            found.setdefault(id(w), w)
    return list(found.values())


@contextmanager
def column_major_weights(model: nn.Module) -> Iterator[None]:
    """Within: every plain CPU ``nn.Linear`` weight of ``model`` is stored column-major (``w.t()``
    contiguous). On exit (also on an exception) each is contiguous again. Enter it outside
    ``torch.inference_mode``: the restored weights must stay normal tensors."""
    weights = _linear_weights(model)
    with torch.no_grad():
        for w in weights:
            w.data = w.data.t().contiguous().t()
    try:
        yield
    finally:
        with torch.no_grad():
            for w in weights:
                w.data = w.data.contiguous()
