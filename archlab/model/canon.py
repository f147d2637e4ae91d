"""Canon layer (Physics of LM Part 4.1, eq. 4.1): h'_t = h_t + sum_j w_j ⊙ h_{t-K+1+j}.

A causal depthwise 1-D convolution (kernel K=4, no bias, optional SiLU) with its own residual. Init is
PyTorch's default Conv1d init (kaiming-uniform, fan_in = K -> U(-1/2, 1/2) for K=4), not 0.02: the paper's
code warns that a 0.02 init is "not wise". Kernel orientation follows torch/causal_conv1d: tap K-1 multiplies
the current token, tap 0 the token K-1 steps back.

Decoding: the state is the last K inputs ``[B, K, C]`` (zero-padded at the start). Unlike the reference HF
code, a multi-token forward with an existing state uses that history, so chunked prefill equals the full
forward.

Document masking (:mod:`archlab.model.documents`): a tap that would reach into the previous document reads
zero instead, exactly as if each document were convolved alone with its own zero padding (a sparse correction
of the unmasked conv at the positions next to document starts; dense masks under torch.compile).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from archlab.model.documents import Documents

Cache = dict[str, torch.Tensor]


class Canon(nn.Module):
    def __init__(self, dim: int, kernel: int = 4, residual: bool = True, activation: bool = False):
        super().__init__()
        self.dim, self.kernel, self.residual, self.activation = dim, kernel, residual, activation
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel))  # [C, 1, K] as nn.Conv1d(groups=C)
        self.weight._no_muon = True  # conv kernels go to AdamW ...
        self.weight._no_weight_decay = True  # ... without decay: 4 taps per channel act like gains, not a matrix
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.kernel)  # kaiming_uniform(a=sqrt(5)) with fan_in = K
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, key: str = "canon", docs: "Documents | None" = None) -> torch.Tensor:
        """x: [B, T, C] -> [B, T, C]. With a cache, reads and updates ``cache[key]`` ([B, K, C], last K inputs);
        with ``docs``, no tap crosses a document boundary."""
        k, T = self.kernel, x.shape[1]
        if docs is not None and cache is not None:
            raise ValueError("document masking applies to training / evaluation forwards, not to decoding with a cache")
        if cache is None:
            padded = F.pad(x, (0, 0, k - 1, 0))  # [B, K-1+T, C], zeros before the start
        else:
            history = cache.get(key)
            if history is None:
                history = x.new_zeros(x.shape[0], k, self.dim)
            full = torch.cat([history.to(x.dtype), x], dim=1)  # [B, K+T, C]
            cache[key] = full[:, -k:].detach()
            padded = full[:, 1:]  # K-1 history rows + T new
        taps = self.weight[:, 0].t()  # [K, C]; tap K-1 multiplies the current token
        if self.residual and not self.activation:  # x + conv(x) = conv with 1 added to the current tap
            taps = torch.cat([taps[:-1], taps[-1:] + 1])
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 math under bf16 training (fp64 stays)
        p, taps = padded.to(acc), taps.to(acc)
        masked = docs is not None and not docs.single
        if torch.compiler.is_compiling():  # dense masks [K-1, B, T, 1]: inductor fuses them into the conv's loop
            y = causal_depthwise_conv(p, taps, docs.conv_masks(k, acc) if masked else None)
        else:  # the unmasked conv, corrected at the few positions near document starts
            y = CausalDepthwiseConv.apply(p, taps, *(docs.conv_fixups(k) if masked else (None, None, None)))
        y = y.to(x.dtype)
        if self.activation:
            y = F.silu(y)
        return x + y if self.residual and self.activation else y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel={self.kernel}, residual={self.residual}, activation={self.activation}"


def causal_depthwise_conv(p: torch.Tensor, taps: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """y_t = sum_k taps_k * p_{t+k} (* masks_k): p [B, K-1+T, C] (left-padded), taps [K, C], masks [K-1, B, T, 1]
    or None -> y [B, T, C]. The form for torch.compile, which fuses the K shifted products (and their autograd
    backward) into one loop."""
    K, T = taps.shape[0], p.shape[1] - taps.shape[0] + 1
    return sum(p[:, k : k + T] * taps[k] * (masks[k] if masks is not None and k < K - 1 else 1) for k in range(K))


class CausalDepthwiseConv(torch.autograd.Function):
    """y_t = sum_k taps_k * p_{t+k} over a left-padded input p [B, K-1+T, C], taps [K, C] -> y [B, T, C].

    K shifted multiply-adds forward and backward instead of F.conv1d: on CPU this is ~3x faster than the
    depthwise conv1d (whose [B, C, T] layout also costs a transpose copy each way), and the kernel-gradient
    is K fused multiply-reductions over B*T.

    Document masking (:meth:`~archlab.model.documents.Documents.conv_fixups`): only the n positions within
    K-1 tokens of a document start have taps that would reach into the previous document. Their products
    (gathered rows ``src`` [n, K-1] of p, where ``invalid`` [n, K-1] is 1) are subtracted from the unmasked
    result at ``rows`` [n], and their gradients likewise: an O(n·K·C) correction instead of K-1 more passes.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, taps: torch.Tensor, rows: torch.Tensor | None, src: torch.Tensor | None,
                invalid: torch.Tensor | None) -> torch.Tensor:
        K, T = taps.shape[0], p.shape[1] - taps.shape[0] + 1
        ctx.save_for_backward(p, taps, rows, src, invalid)
        y = p[:, K - 1 :] * taps[K - 1]
        for k in range(K - 1):
            y.addcmul_(p[:, k : k + T], taps[k])
        if rows is not None:
            C = p.shape[-1]
            reach = p.reshape(-1, C)[src] * invalid[..., None].to(p.dtype)  # [n, K-1, C]: the products to remove
            y.view(-1, C).index_add_(0, rows, (reach * taps[:-1]).sum(1), alpha=-1)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:  # g: [B, T, C]
        p, taps, rows, src, invalid = ctx.saved_tensors
        K, T = taps.shape[0], g.shape[1]
        gp = torch.zeros_like(p)
        gtaps = torch.empty_like(taps)
        for k in range(K):
            gp[:, k : k + T].addcmul_(g, taps[k])
            gtaps[k] = (g * p[:, k : k + T]).sum((0, 1))
        if rows is not None:
            C = p.shape[-1]
            g_rows = g.reshape(-1, C)[rows][:, None] * invalid[..., None].to(g.dtype)  # [n, K-1, C]
            gp.view(-1, C).index_add_(0, src.flatten(), (g_rows * taps[:-1]).reshape(-1, C), alpha=-1)
            gtaps[:-1] -= (g_rows * p.reshape(-1, C)[src]).sum(0)
        return gp, gtaps, None, None, None


def maybe_canon(letter: str, dim: int, cfg) -> Canon | None:
    """A Canon module if ``letter`` is in ``cfg.canon`` (a ModelConfig), else None."""
    if letter not in cfg.canon:
        return None
    return Canon(dim, cfg.canon_kernel, cfg.canon_residual, cfg.canon_activation)


def apply_canon(canon: Canon | None, x: torch.Tensor, cache: Cache | None, key: str, docs: "Documents | None" = None) -> torch.Tensor:
    return x if canon is None else canon(x, cache, key, docs)
