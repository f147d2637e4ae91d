"""Exact evaluation helpers of the synthetic tasks: teacher-forced scoring, ragged greedy decoding, and the
reductions of per-token correctness to per-answer and per-group metrics."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from archlab.tasks.instances import PAD


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[torch.device]:
    """eval mode + no_grad for the block; yields the model's device and restores train mode after."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was)


def teacher_forced(model: torch.nn.Module, tokens: np.ndarray, doc_ids: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Score windows tokens [B, T+1]: (argmax prediction, CE in nats) of every target tokens[:, 1:], each [B, T].
    ``doc_ids`` [B, T+1] (document masking) or None."""
    with inference(model) as device:
        ids = torch.from_numpy(tokens).to(device)
        masking = {} if doc_ids is None else {"doc_ids": doc_ids[:, :-1].to(device)}
        logits = model(ids[:, :-1], **masking)[0].float()  # [B, T, V]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return logits.argmax(-1).cpu().numpy(), nll.cpu().numpy()


def greedy_complete(model: torch.nn.Module, prompts: Sequence[np.ndarray], max_new: int, eos_id: int) -> list[np.ndarray]:
    """Greedy continuation of prompts of different lengths, each until ``eos_id`` (included) or ``max_new`` tokens.

    Prompts are right-padded in one batch; causal models never look right, so each row is scored at its own
    last position. No cache: each step is a full forward pass over the batch.
    """
    lens = np.array([len(p) for p in prompts])
    buf = np.full((len(prompts), int(lens.max()) + max_new), PAD, np.int64)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = p
    cur, done, rows = lens.copy(), np.zeros(len(prompts), bool), np.arange(len(prompts))
    with inference(model) as device:
        for _ in range(max_new):
            width = int(cur[~done].max())
            logits = model(torch.from_numpy(buf[~done, :width]).to(device))[0]  # [b, width, V]
            nxt = logits[torch.arange(len(logits)), torch.from_numpy(cur[~done] - 1)].argmax(-1).cpu().numpy()
            act = rows[~done]
            buf[act, cur[act]] = nxt
            cur[act] += 1
            done[act[nxt == eos_id]] = True
            if done.all():
                break
    return [buf[i, lens[i] : cur[i]] for i in range(len(prompts))]


def span_correct(tag: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal non-zero tag along rows of tag, correct [B, T] -> (tag of each run, all-correct of each run)."""
    t, c = tag.ravel(), correct.ravel()
    prev = np.concatenate([[0], t[:-1]])
    prev[:: tag.shape[1]] = 0  # runs never cross rows
    idx = np.nonzero(t)[0]
    starts = np.nonzero((t != prev)[idx])[0]
    if len(idx) == 0:
        return np.zeros(0, t.dtype), np.zeros(0, bool)
    return t[idx][starts], np.minimum.reduceat(c[idx].astype(np.int8), starts).astype(bool)


def grouped_mean(keys: np.ndarray, values: np.ndarray, prefix: str) -> dict[str, float]:
    """{f"{prefix}{k}": mean of values where keys == k} for every key present."""
    return {f"{prefix}{k}": float(values[keys == k].mean()) for k in np.unique(keys)}
