"""Published checkpoint formats archlab reads and writes (a directory with config.json + safetensors).

``FORMATS[name].load(dir)`` -> archlab model; ``FORMATS[name].save(model, dir)`` writes the format.
Each format lives in its own module with ``load(path)`` and ``save(model, path)``; modules are imported
on first use so a format whose model family is absent does not break the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Format:
    """One checkpoint format: the module implementing it and a one-line description."""

    name: str
    module: str  # archlab.formats.<module>, exposing load(path) and save(model, path)
    summary: str

    def load(self, path: str | Path) -> nn.Module:
        """Checkpoint directory -> archlab model with the same outputs."""
        return import_module(self.module).load(Path(path))

    def save(self, model: nn.Module, path: str | Path, **options: Any) -> None:
        """archlab model -> checkpoint directory in this format (``options``: the module's save keywords)."""
        import_module(self.module).save(model, Path(path), **options)


FORMATS: dict[str, Format] = {
    "llama-canon": Format("llama-canon", "archlab.formats.llama_canon", "PhysicsLM4 LlamaCanon (HF Llama + Canon layers)"),
    "raven": Format("raven", "archlab.formats.raven", "retrofitted depth recurrence (Raven/Huginn-style Llama)"),
}


def get_format(name: str) -> Format:
    """The registered format called ``name``; ValueError listing the known ones otherwise."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]
