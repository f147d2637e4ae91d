"""The task interface: a task yields token batches as a pure function of (seed, rank, step).

A batch is a :class:`Batch` ``(tokens, loss_mask, doc_ids)``:
  tokens:    LongTensor [B, T+1]  — the model reads tokens[:, :-1] and predicts tokens[:, 1:]
  loss_mask: BoolTensor [B, T+1]  — True where a token is a prediction *target*; the loss uses loss_mask[:, 1:]
  doc_ids:   LongTensor [B, T+1] or None — with ``data.doc_mask``, the document (instance) of every token; the
             model gets doc_ids[:, :-1] and no token sees another document (archlab/model/documents.py)

``batch()`` must be a pure function of its arguments: the same (split, seed, rank, step) gives the same
tensors in any process on any machine. Train and test streams must never share an instance.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from archlab.model.lm import LM

SPLITS = ("train", "val", "test")


class TaskConfig(BaseModel):
    """Base of every task's config; subclasses add their own fields and set ``name``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: str
    doc_mask: bool = Field(False, description="document masking of packed windows: no token sees another instance / "
                           "document (attention, Canon and conv windows, linear-mixer states), in training and evaluation")


class Batch(NamedTuple):
    """One batch: tokens [B, T+1] long, loss_mask [B, T+1] bool, doc_ids [B, T+1] long (None without doc_mask)."""

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    doc_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(None if t is None else t.to(device) for t in self))

    def rows(self, index: slice) -> "Batch":
        return Batch(*(None if t is None else t[index] for t in self))

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(ids, targets, target mask, doc_ids), each [B, T]: what ``LM.loss`` takes."""
        docs = None if self.doc_ids is None else self.doc_ids[:, :-1]
        return self.tokens[:, :-1], self.tokens[:, 1:], self.loss_mask[:, 1:], docs


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
    def batch(self, split: str, seed: int, rank: int, step: int, batch_size: int) -> Batch:
        """Batch(tokens, loss_mask, doc_ids), a pure function of the arguments; doc_ids is None unless
        ``cfg.doc_mask`` (use :meth:`doc_ids_if_masked`)."""

    def doc_ids_if_masked(self, doc_ids: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """doc_ids as a tensor when this task's config asks for document masking, else None."""
        if not self.cfg.doc_mask:
            return None
        return torch.as_tensor(doc_ids, dtype=torch.long)

    def evaluate(self, model: "LM", seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Task metrics on the test split (default: masked loss only). Tasks override with exact metrics."""
        from archlab.evaluate import masked_loss_eval

        return masked_loss_eval(model, self, "test", seed, n_batches, batch_size)

    def decode(self, tokens: list[int]) -> str:
        """Human-readable rendering of token ids."""
        return " ".join(map(str, tokens))
