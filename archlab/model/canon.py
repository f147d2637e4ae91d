"""Canon layer (Physics of LM Part 4.1, eq. 4.1): h'_t = h_t + sum_j w_j ⊙ h_{t-K+1+j}.

A causal depthwise 1-D convolution (kernel K=4, no bias, optional SiLU) with its own residual. Init is
PyTorch's default Conv1d init (kaiming-uniform, fan_in = K -> U(-1/2, 1/2) for K=4), not 0.02: the paper's
code warns that a 0.02 init is "not wise". Kernel orientation follows torch/causal_conv1d: tap K-1 multiplies
the current token, tap 0 the token K-1 steps back.

Decoding: the state is the last K inputs ``[B, C, K]`` (zero-padded at the start). Unlike the reference HF
code, a multi-token forward with an existing state uses that history, so chunked prefill equals the full
forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Cache = dict[str, torch.Tensor]


class Canon(nn.Module):
    def __init__(self, dim: int, kernel: int = 4, residual: bool = True, activation: bool = False):
        super().__init__()
        self.dim, self.kernel, self.residual, self.activation = dim, kernel, residual, activation
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel))  # [C, 1, K] as nn.Conv1d(groups=C)
        self.weight._no_muon = True  # conv kernels go to AdamW
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.kernel)  # kaiming_uniform(a=sqrt(5)) with fan_in = K
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, key: str = "canon") -> torch.Tensor:
        """x: [B, T, C] -> [B, T, C]. With a cache, reads and updates ``cache[key]`` ([B, C, K])."""
        xt = x.transpose(1, 2)  # [B, C, T]
        k = self.kernel
        if cache is None:
            padded = F.pad(xt, (k - 1, 0))
        else:
            history = cache.get(key)
            if history is None:
                history = xt.new_zeros(xt.shape[0], self.dim, k)
            full = torch.cat([history.to(xt.dtype), xt], dim=2)  # [B, C, K+T]
            cache[key] = full[:, :, -k:].detach()
            padded = full[:, :, 1:]  # drop the oldest: K-1 history columns + T new
        y = F.conv1d(padded, self.weight.to(xt.dtype), groups=self.dim).transpose(1, 2)  # [B, T, C]
        if self.activation:
            y = F.silu(y)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel={self.kernel}, residual={self.residual}, activation={self.activation}"


def maybe_canon(letter: str, dim: int, cfg) -> Canon | None:
    """A Canon module if ``letter`` is in ``cfg.canon`` (a ModelConfig), else None."""
    if letter not in cfg.canon:
        return None
    return Canon(dim, cfg.canon_kernel, cfg.canon_residual, cfg.canon_activation)


def apply_canon(canon: Canon | None, x: torch.Tensor, cache: Cache | None, key: str) -> torch.Tensor:
    return x if canon is None else canon(x, cache, key)
