"""Evaluation: masked loss / perplexity on a held-out stream, and task metrics."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from archlab.model.lm import LM
    from archlab.model.recurrence import RecurrentLM
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
        ids, targets, mask, docs = task.batch(split, seed, 0, i, batch_size).to(device).model_inputs()
        with autocast_context(device, precision):
            loss_sum = model.loss(ids, targets, mask, normaliser=1.0, doc_ids=docs)
        total += float(loss_sum)
        count += int(mask.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


def model_metrics(model: "LM", task: "Task", seed: int, n_batches: int, batch_size: int) -> dict[str, Any]:
    """Held-out loss on 'val' plus the task's own metrics, if it defines them (what ``archlab eval`` prints)."""
    from archlab.tasks.base import Task

    metrics = masked_loss_eval(model, task, "val", seed, n_batches, batch_size)
    if type(task).evaluate is not Task.evaluate:
        metrics.update(task.evaluate(model, seed, n_batches, batch_size))
    return metrics


def recurrence_sweep(
    model: "RecurrentLM", task: "Task", seed: int, rs: list[int], n_batches: int, batch_size: int, seq_len: int
) -> list[dict[str, Any]]:
    """model_metrics at each test-time recurrence r, with forward FLOPs/token (prelude + r * core + coda + head).

    The recurrent state is random on every forward; the RNG is reseeded per r so that the sweep is repeatable.
    """
    rows = []
    for r in rs:
        torch.manual_seed(seed)
        with model.depth(r):
            metrics = model_metrics(model, task, seed, n_batches, batch_size)
        rows.append({"r": r, "flops_per_token": model.inference_flops_per_token(seq_len, r), **metrics})
    return rows
