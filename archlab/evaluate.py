"""Evaluation: masked loss / perplexity on a held-out stream, and task metrics."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from archlab.model.lm import LM
    from archlab.tasks.base import Task


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def masked_loss_eval(
    model: "LM", task: "Task", split: str, seed: int, n_batches: int, batch_size: int, precision: str = "fp32"
) -> dict[str, Any]:
    """Mean masked next-token loss over ``n_batches`` fixed batches of ``split`` (steps 0..n-1)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    for i in range(n_batches):
        tokens, mask = task.batch(split, seed, 0, i, batch_size)
        tokens, mask = tokens.to(device), mask.to(device)
        with autocast_context(device, precision):
            loss_sum = model.loss(tokens[:, :-1], tokens[:, 1:], mask[:, 1:], normaliser=1.0)
        total += float(loss_sum)
        count += int(mask[:, 1:].sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}
