"""Residual styles: how a sub-layer F and its norms wrap the stream x. Same interface for every style::

    x = style(x, F)      # F: [B, T, D] -> [B, T, D]

Each style also says whether the model needs a final norm before the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from archlab.model.norms import make_norm

if TYPE_CHECKING:
    from archlab.config import ModelConfig

SubLayer = Callable[[torch.Tensor], torch.Tensor]


class Residual(nn.Module):
    needs_final_norm: bool = True

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()


class PreLN(Residual):
    """x + F(Norm(x)) — GPT-2 / Llama. Final norm before the head."""

    def __init__(self, cfg: "ModelConfig"):
        super().__init__(cfg)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return x + f(self.norm(x))


class PostLN(Residual):
    """Norm(x + F(x)) — the original Transformer. The stream is already normalised: no final norm."""

    needs_final_norm = False

    def __init__(self, cfg: "ModelConfig"):
        super().__init__(cfg)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, f: SubLayer) -> torch.Tensor:
        return self.norm(x + f(x))


RESIDUALS: dict[str, type[Residual]] = {"pre": PreLN, "post": PostLN}


def make_residual(cfg: "ModelConfig") -> Residual:
    return RESIDUALS[cfg.residual](cfg)
