"""bf16 autocast on CPUs without bf16 instructions: the same roundings as a bf16 kernel, run by fp32 kernels.

Without AVX512 (oneDNN's bf16 path) torch's CPU bf16 GEMM and SDPA fall back to reference loops: ~1-3 GFLOP/s
against ~50 GFLOP/s for fp32 on the 2-core AVX2 development box (``benchmarks/train_throughput.py`` prints
both peaks). A bf16 GEMM as autocast runs it (oneDNN, cuBLAS) rounds its operands to bf16, accumulates in
fp32 and rounds the result to bf16. :func:`linear` and :func:`sdpa` do exactly those roundings around an fp32
kernel -- operands rounded to bf16 then upcast (exact), fp32 GEMM / attention, output rounded to bf16 -- so a
model trained under bf16 autocast sees bf16 numerics (up to summation order) at fp32 speed. Backward follows
from autograd through the casts: gradients are rounded to bf16 where a bf16 kernel would produce them.

Where the CPU has native bf16 (or off the CPU, or outside bf16 autocast) both are the plain torch calls.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from archlab.model.decode_layout import packed_linear


# A constant, not a call: torch.compile traces ``emulating`` and cannot trace this query (it returns a bool).
CPU_LACKS_BF16 = not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def emulating(x: torch.Tensor) -> bool:
    """True when ``x`` is on the CPU under bf16 autocast and the CPU has no fast bf16 kernels."""
    return (  # cheapest checks first: this runs for every matmul, also in op-bound decoding
        CPU_LACKS_BF16
        and torch.is_autocast_enabled("cpu")
        and x.device.type == "cpu"
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def _rounded(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16, held in fp32 (exact)."""
    return t.to(torch.bfloat16).float()


class _EmulatedLinear(torch.autograd.Function):
    """y = bf16(x_bf16 @ w_bf16ᵀ + b_bf16) by fp32 GEMMs (the bias added in fp32 before the one rounding, as
    oneDNN's bf16 kernel does); backward likewise, with autocast off (the autograd engine runs backward under
    the caller's autocast state, which would send its GEMMs to the slow bf16 kernel)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x: [N, in], weight: [out, in], bias: [out] or None
        xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        ctx.save_for_backward(xb, wb)  # bf16 copies: half the memory of fp32 activations
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        with torch.autocast("cpu", enabled=False):
            y = xb.float() @ wb.float().t()
            if bias is not None:
                y += _rounded(bias)
            return y.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # grad: [N, out]
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        with torch.autocast("cpu", enabled=False):
            g = grad.to(torch.bfloat16).float()
            gx = (g @ wb.float()).to(torch.bfloat16).to(x_dtype)
            gw = (g.t() @ xb.float()).to(torch.bfloat16).to(w_dtype)
            gb = None if b_dtype is None else g.sum(0).to(torch.bfloat16).to(b_dtype)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias); x: [..., in], weight: [out, in], bias: [out] or None -> [..., out]. Every
    matrix layer of the model goes through here (not ``nn.Linear.__call__``): under bf16 autocast on a CPU
    without bf16 kernels it runs :class:`_EmulatedLinear`, and while decoding it uses the weight's packed copy
    where :func:`archlab.model.decode_layout.decode_weights` made one."""
    if (y := packed_linear(x, weight, bias)) is not None:
        return y
    if not emulating(x):
        return F.linear(x, weight, bias)
    return _EmulatedLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


def _pack_bf16(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Saved [B, H, T, hd] fp32 tensors of the emulated attention are stored in bf16, as a bf16 kernel stores
    them: q, k, v are bf16 values already (exact); the output is rounded as the bf16 kernel's output is."""
    return (t.to(torch.bfloat16), True) if t.dtype == torch.float32 and t.dim() == 4 else (t, False)


def _unpack_bf16(packed: tuple[torch.Tensor, bool]) -> torch.Tensor:
    t, was_fp32 = packed
    return t.float() if was_fp32 else t


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v, **kwargs); q: [B, H, T, hd], k, v: [B, Hkv, S, hd]."""
    if not emulating(q):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    # under torch.compile the partitioner chooses what backward keeps (and dynamo cannot trace the hooks)
    hooks = nullcontext() if torch.compiler.is_compiling() else torch.autograd.graph.saved_tensors_hooks(_pack_bf16, _unpack_bf16)
    with torch.autocast("cpu", enabled=False), hooks:
        y = F.scaled_dot_product_attention(_rounded(q), _rounded(k), _rounded(v), **kwargs)
    return y.to(torch.bfloat16)
