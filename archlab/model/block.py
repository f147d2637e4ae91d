"""Block = residual(Canon-A -> mixer) then residual(Canon-C -> MLP). Knows nothing of the mixer inside.

The residual style (model.residual) wraps each sub-layer; block 0 also owns the optional embedding norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from archlab.model.canon import apply_canon, maybe_canon
from archlab.model.mixers import build_mixer
from archlab.model.mlp import MLP
from archlab.model.norms import make_norm
from archlab.model.residual import make_residual

if TYPE_CHECKING:
    from archlab.config import ModelConfig
    from archlab.model.documents import Documents


class Block(nn.Module):
    def __init__(self, cfg: "ModelConfig", layer_idx: int):
        super().__init__()
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embed_norm and layer_idx == 0 else None
        self.mixer_residual = make_residual(cfg)
        self.canon_a = maybe_canon("A", cfg.d_model, cfg)
        self.mixer = build_mixer(cfg.mixer, cfg, layer_idx)
        self.has_mlp = cfg.mlp != "none"
        if self.has_mlp:
            self.mlp_residual = make_residual(cfg)
            self.canon_c = maybe_canon("C", cfg.d_model, cfg)
            self.mlp = MLP(cfg)
            self.mlp_residual.scale_init(self.mlp)
        self.mixer_residual.scale_init(self.mixer)  # init hook of the residual style (DeepNorm's beta)

    def forward(self, x: torch.Tensor, cache: dict | None = None, docs: "Documents | None" = None) -> torch.Tensor:
        """x: [B, T, D]. ``cache`` (decoding only) holds this block's Canon and mixer states; ``docs`` masks
        documents of a packed window (training and evaluation)."""
        if self.embed_norm is not None:  # block 0 only, with model.embed_norm
            x = self.embed_norm(x)
        x = self.mixer_residual(x, lambda h: self._mix(h, cache, docs))
        if self.has_mlp:
            x = self.mlp_residual(x, lambda h: self.mlp(apply_canon(self.canon_c, h, cache, "canon_c", docs), cache, docs))
        return x

    def _mix(self, h: torch.Tensor, cache: dict | None, docs: "Documents | None") -> torch.Tensor:
        h = apply_canon(self.canon_a, h, cache, "canon_a", docs)
        y, _ = self.mixer(h, None if cache is None else cache.setdefault("mixer", {}), docs)
        return y
