"""The mixer base class and ``build_mixer``: a mixer is built from its own config and the model's."""

from __future__ import annotations

from torch import nn

from archlab.model.config import MIXERS, MixerConfig, ModelConfig


class Mixer(nn.Module):
    def __init__(self, cfg: MixerConfig, model_cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx


def build_mixer(cfg: MixerConfig, model_cfg: ModelConfig, layer_idx: int) -> Mixer:
    _, cls = MIXERS.get(cfg.name)
    return cls(cfg, model_cfg, layer_idx)
