"""Feed-forward sub-layers: SwiGLU (fused gate/up projection, Canon-D on their concatenation) and GELU."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from archlab.model.canon import apply_canon, maybe_canon
from archlab.model.cpu_bf16 import linear
from archlab.model.fused import silu_mul

if TYPE_CHECKING:
    from archlab.config import ModelConfig
    from archlab.model.documents import Documents


class MLP(nn.Module):
    """swiglu: w_down(silu(gate) * up) with [gate, up] = w_in(x); gelu: w_down(gelu(w_in(x)))."""

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.kind, self.ffn = cfg.mlp, cfg.resolved_ffn_dim
        width = 2 * self.ffn if self.kind == "swiglu" else self.ffn
        self.w_in = nn.Linear(cfg.d_model, width, bias=False)  # swiglu: rows [gate; up]
        self.w_down = nn.Linear(self.ffn, cfg.d_model, bias=False)
        self.canon_d = maybe_canon("D", width, cfg)
        self.init_std, self.out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w_in.weight, std=self.init_std)
        nn.init.normal_(self.w_down.weight, std=self.out_std)

    def forward(self, x: torch.Tensor, cache: dict | None = None, docs: "Documents | None" = None) -> torch.Tensor:  # [B, T, D]
        h = apply_canon(self.canon_d, linear(x, self.w_in.weight), cache, "canon_d", docs)
        if self.kind == "swiglu":
            h = silu_mul(*h.chunk(2, dim=-1))
        else:
            h = F.gelu(h)
        return linear(h, self.w_down.weight)
