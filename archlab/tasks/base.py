"""The task interface and registry: a task yields token batches as a pure function of (seed, rank, step).

Each task module registers its (config, task) classes with ``@register_task(name, ConfigClass)``;
``build_task(cfg, seq_len)`` builds the one ``cfg.name`` names (``archlab.tasks`` imports the built-in ones).

A batch is a :class:`Batch` ``(tokens, loss_mask, doc_ids)``:
  tokens:    LongTensor [B, T+1]  — the model reads tokens[:, :-1] and predicts tokens[:, 1:]
  loss_mask: BoolTensor [B, T+1]  — True where a token is a prediction *target*; the loss uses loss_mask[:, 1:]
  doc_ids:   LongTensor [B, T+1] or None — with ``data.doc_mask``, the document (instance) of every token; the
             model gets doc_ids[:, :-1] and no token sees another document (archlab/model/documents.py)

``batch()`` must be a pure function of its arguments: the same (split, seed, rank, step) gives the same
tensors in any process on any machine. Train and test streams must never share an instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from archlab.model.lm import LM
from archlab.registry import Registry


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

    def evaluate(self, model: LM, seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
        """Exact task metrics on the test split (accuracies, ...); none by default (the held-out loss is
        archlab.evaluate's)."""
        return {}

    def decode(self, tokens: list[int]) -> str:
        """Human-readable rendering of token ids."""
        return " ".join(map(str, tokens))


TASKS: Registry[type[Task]] = Registry("task", default="text")


def register_task(name: str, config_cls: type[TaskConfig]) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: ``@register_task("depo", DepoConfig)``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.config_cls = config_cls
        return TASKS.register(name, config_cls)(cls)

    return deco


def build_task(cfg: TaskConfig, seq_len: int) -> Task:
    _, cls = TASKS.get(cfg.name)
    return cls(cfg, seq_len)
