"""The split partition of the instance space and the packing of instances into windows.

* Train/val/test are a partition of the *instance space* by a hash of each instance's tokens, so two splits
  can never share an instance, whatever the seeds (tasks may opt out, e.g. Capo, whose test set is by
  definition the training population).
* Instances are packed left-aligned into windows of T+1 tokens: every window starts at an instance
  boundary, so its first instance is never truncated. ``packing="truncate"`` (the paper's) fills the window
  and cuts the last instance; ``packing="pad"`` keeps whole instances only and pads the tail (masked out).
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Literal, NamedTuple

import numpy as np

from archlab.data.streams import SPLITS
from archlab.tasks.instances import PAD, Instances, segment_positions

Packing = Literal["truncate", "pad"]

# Hash buckets (of 100) per split: 80% of the instance space trains, 10% validates, 10% tests.
SPLIT_BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}

_P = np.uint64(0x9E3779B97F4A7C15)


def instance_split(inst: Instances) -> np.ndarray:
    """[M] index into SPLITS of each instance, a fixed function of its tokens (seed-independent)."""
    if len(inst) == 0:
        return np.zeros(0, np.int64)
    pos = segment_positions(inst.lengths)
    powers = np.cumprod(np.full(int(inst.lengths.max()), _P, np.uint64))  # wraps mod 2^64
    h = np.add.reduceat((inst.tokens.astype(np.uint64) + np.uint64(1)) * powers[pos], inst.offsets[:-1])
    h ^= h >> np.uint64(31)  # splitmix64 finaliser
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    bucket = (h % np.uint64(100)).astype(np.int64)
    return np.searchsorted([SPLIT_BUCKETS[s][1] for s in SPLITS], bucket, side="right")


class Windows(NamedTuple):
    """Packed windows, each [n_windows, width]: tokens, loss mask, task tag, and the instance (document) index
    of every token within its window (0, 0, .., 1, 1, ..; the padded tail counts as further documents)."""

    tokens: np.ndarray
    mask: np.ndarray
    tag: np.ndarray
    doc: np.ndarray


def pack_windows(
    draw: Callable[[int], Instances], n_windows: int, width: int, packing: Packing, per_window: float
) -> Windows:
    """Pack instances from ``draw(count)`` left-aligned into windows of ``width`` tokens.

    Every window starts with a fresh instance (never truncated; all instances must fit ``width``). With
    "truncate" the window is filled and its last instance cut; with "pad" only whole instances go in and the
    tail is PAD (mask False). The instance after a window's last starts the next window. ``per_window`` (the
    expected number of instances a window uses up) sizes the draws.
    """
    buf, starts, ends, s, fruitless = Instances.empty(), [], [], 0, 0
    while len(starts) < n_windows:
        need = (n_windows - len(starts)) * per_window
        count = math.ceil(need + 2 * math.sqrt(need)) + 2 - (len(buf) - s)  # ~2 sd margin: a second draw is rare
        new = draw(max(1, count))
        fruitless = 0 if len(new) else fruitless + 1
        if fruitless > 50:
            raise RuntimeError("no instance fits the window; increase seq_len or shrink the task")
        buf = Instances.concat([buf, new])
        off, m = buf.offsets.tolist(), len(buf)
        while len(starts) < n_windows:
            target = off[s] + width
            if packing == "truncate":
                e, end = bisect.bisect_left(off, target), target  # first e with off[e] >= target
                if e > m:
                    break
            else:
                e = bisect.bisect_right(off, target) - 1  # last e with off[e] <= target
                if e >= m:
                    break
                end = off[e]
            starts.append(off[s]), ends.append(end)
            s = e
    idx = np.array(starts)[:, None] + np.arange(width)  # [B, W] token index into buf
    valid = idx < np.array(ends)[:, None]
    inst = np.searchsorted(buf.offsets, idx, side="right") - 1  # [B, W] instance of each token (padding: later ones)
    idx = np.where(valid, idx, 0)
    tokens, tag = np.where(valid, buf.tokens[idx], PAD), np.where(valid, buf.tag[idx], 0).astype(np.int32)
    return Windows(tokens, valid & buf.mask[idx], tag, inst - inst[:, :1])
