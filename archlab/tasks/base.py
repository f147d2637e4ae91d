"""The task interface: a task yields token batches as a pure function of (seed, rank, step).

A batch is ``(tokens, loss_mask)``:
  tokens:    LongTensor [B, T+1]  — the model reads tokens[:, :-1] and predicts tokens[:, 1:]
  loss_mask: BoolTensor [B, T+1]  — True where a token is a prediction *target*; the loss uses loss_mask[:, 1:]

``batch()`` must be a pure function of its arguments: the same (split, seed, rank, step) gives the same
tensors in any process on any machine. Train and test streams must never share an instance.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from archlab.model.lm import LM

SPLITS = ("train", "val", "test")


class TaskConfig(BaseModel):
    """Base of every task's config; subclasses add their own fields and set ``name``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str


def stream_seed(seed: int, split: str, rank: int, step: int, *extra: int) -> int:
    """A 63-bit seed derived from (seed, split, rank, step, ...) by hashing: streams never collide."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    key = f"{seed}/{split}/{rank}/{step}/" + "/".join(map(str, extra))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def rng_for(seed: int, split: str, rank: int, step: int, *extra: int) -> np.random.Generator:
    """numpy Generator for one (seed, split, rank, step) point of a stream."""
    return np.random.default_rng(stream_seed(seed, split, rank, step, *extra))


class Task(ABC):
    """A data source for training and its exact evaluation."""

    config_cls: ClassVar[type[TaskConfig]]

    def __init__(self, cfg: TaskConfig, seq_len: int):
        self.cfg = cfg
        self.seq_len = seq_len

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the model must embed."""

    @abstractmethod
    def batch(self, split: str, seed: int, rank: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, T+1] long, loss_mask [B, T+1] bool), a pure function of the arguments."""

    def evaluate(self, model: "LM", seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Task metrics on the test split (default: masked loss only). Tasks override with exact metrics."""
        from archlab.evaluate import masked_loss_eval

        return masked_loss_eval(model, self, "test", seed, n_batches, batch_size)

    def decode(self, tokens: list[int]) -> str:
        """Human-readable rendering of token ids."""
        return " ".join(map(str, tokens))
