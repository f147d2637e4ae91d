"""Sequence mixers. Each file registers ``(Config, Mixer class)`` under a name; importing this package
registers the built-in ones.

Interface (fla's layer contract)::

    mixer = MixerClass(cfg, model_cfg, layer_idx)
    y, state = mixer(x, state, docs)   # x, y: [B, T, D]; state: None in training, a dict when decoding

In decoding, pass an (initially empty) dict as ``state``; the mixer reads and updates it in place and
returns it. KV caches, recurrent states and Canon conv states all live in that dict. ``docs`` (a
:class:`~archlab.model.documents.Documents`, or None) is document masking of packed windows in training and
evaluation: no token may see another document (attention mask, conv windows, recurrent state resets).
"""

from archlab.model.config import MIXERS, MixerConfig
from archlab.model.mixers import attention, gdn, gla, mamba2  # noqa: F401  (register the mixers)
from archlab.model.mixers.base import Mixer, build_mixer

__all__ = ["MIXERS", "Mixer", "MixerConfig", "build_mixer"]
