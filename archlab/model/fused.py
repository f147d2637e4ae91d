"""Element-wise autograd functions that save less than autograd's composition of the same ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving only gate and up (often views of one projection output) and recomputing
    silu(gate) in backward: autograd's F.silu(gate) * up also keeps silu(gate), a third tensor of that size."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        d_gate = torch.ops.aten.silu_backward(g * up, gate)  # (g·up)·silu'(gate)
        return d_gate, g * F.silu(gate)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (same shapes) with the smaller saved state of :class:`SiluMul`."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SiluMul.apply(gate, up)
    return F.silu(gate).mul_(up)  # nothing to save: skip the autograd.Function call (decoding is op-bound)
