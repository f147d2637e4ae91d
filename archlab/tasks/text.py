"""Real text, byte-level: a local corpus of files read into one uint8 array, random windows per step.

The default corpus needs nothing outside this machine: the Python standard library's own ``.py`` files
(a few MB of real, structured text). ``paths`` may name other files or directories instead.
The last ``val_fraction`` of the corpus is held out; train windows never reach into it.
"""

from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from archlab.tasks import register_task
from archlab.tasks.base import Task, TaskConfig, rng_for

BYTE_VOCAB = 256


class TextConfig(TaskConfig):
    name: Literal["text"] = "text"
    paths: list[str] = Field(default_factory=list, description="files or directories; [] = Python stdlib sources")
    glob: str = "*.py"
    max_bytes: int = Field(4_000_000, gt=0, description="read at most this many bytes of corpus")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)


def _corpus_files(paths: tuple[str, ...], glob: str) -> list[Path]:
    roots = [Path(p) for p in paths] or [Path(sysconfig.get_paths()["stdlib"])]
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files.extend(sorted(p for p in root.rglob(glob) if p.is_file() and "site-packages" not in p.parts))
        else:
            raise FileNotFoundError(f"data.paths: {str(root)!r} does not exist")
    if not files:
        raise FileNotFoundError(f"data.paths: no files matching {glob!r} under {[str(r) for r in roots]}")
    return files


@lru_cache(maxsize=4)
def load_corpus(paths: tuple[str, ...], glob: str, max_bytes: int) -> np.ndarray:
    """Concatenate files (sorted, deterministic) into a uint8 array of at most max_bytes."""
    chunks, total = [], 0
    for f in _corpus_files(paths, glob):
        data = f.read_bytes()[: max_bytes - total]
        chunks.append(np.frombuffer(data, dtype=np.uint8))
        total += len(data)
        if total >= max_bytes:
            break
    return np.concatenate(chunks)


@register_task("text", TextConfig)
class TextTask(Task):
    cfg: TextConfig

    def __init__(self, cfg: TextConfig, seq_len: int):
        super().__init__(cfg, seq_len)
        corpus = load_corpus(tuple(cfg.paths), cfg.glob, cfg.max_bytes)
        cut = int(len(corpus) * (1 - cfg.val_fraction))
        self.parts = {"train": corpus[:cut], "val": corpus[cut:], "test": corpus[cut:]}
        for split, part in self.parts.items():
            if len(part) <= seq_len + 1:
                raise ValueError(f"text corpus {split} part has {len(part)} bytes, fewer than seq_len+1={seq_len + 1}")

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB

    def batch(self, split: str, seed: int, rank: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = self.parts[split]
        starts = rng_for(seed, split, rank, step).integers(0, len(part) - self.seq_len - 1, size=batch_size)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]  # [B, T+1]
        tokens = torch.from_numpy(part[idx].astype(np.int64))
        return tokens, torch.ones_like(tokens, dtype=torch.bool)

    def decode(self, tokens: list[int]) -> str:
        return bytes(t for t in tokens if 0 <= t < BYTE_VOCAB).decode("utf-8", errors="replace")

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))
