"""Sequence mixers. Each file registers ``(Config, Mixer class)`` under a name.

Interface (fla's layer contract)::

    mixer = MixerClass(cfg, model_cfg, layer_idx)
    y, state = mixer(x, state, docs)   # x, y: [B, T, D]; state: None in training, a dict when decoding

In decoding, pass an (initially empty) dict as ``state``; the mixer reads and updates it in place and
returns it. KV caches, recurrent states and Canon conv states all live in that dict. ``docs`` (a
:class:`~archlab.model.documents.Documents`, or None) is document masking of packed windows in training and
evaluation: no token may see another document (attention mask, conv windows, recurrent state resets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict
from torch import nn

from archlab.registry import Registry

if TYPE_CHECKING:
    from archlab.config import ModelConfig


class MixerConfig(BaseModel):
    """Base of every mixer's config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str

    def check(self, d_model: int) -> None:
        """Raise ValueError (naming the field) if this mixer cannot be built at width d_model."""

    def flops_per_token(self, d_model: int, seq_len: int) -> float:
        """Forward FLOPs per token spent in sequence mixing beyond the projections (e.g. QK^T and AV)."""
        return 0.0


class Mixer(nn.Module):
    def __init__(self, cfg: MixerConfig, model_cfg: "ModelConfig", layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx


MIXERS: Registry[type[Mixer]] = Registry("mixer", default="attention")


def build_mixer(cfg: MixerConfig, model_cfg: "ModelConfig", layer_idx: int) -> Mixer:
    _, cls = MIXERS.get(cfg.name)
    return cls(cfg, model_cfg, layer_idx)


from archlab.model.mixers import attention, gdn, gla, mamba2  # noqa: E402,F401  (register the mixers)

__all__ = ["MIXERS", "Mixer", "MixerConfig", "build_mixer"]
