"""Packed windows, sampled without replacement as a pure function of (seed, split, rank, step).

Each array of a split is cut into windows of T+1 tokens that overlap by one token (window j of an array is
``a[jT : jT+T+1]``); a window never crosses an array (shard) boundary, but does cross document boundaries
(documents are separated by EOS: sequences are packed). Batch ``step`` of size B takes the windows at global
positions ``step·B .. step·B+B-1`` of an endless stream of epochs, each epoch a fresh permutation of all
windows seeded by (seed, split, rank, epoch). Hence a batch depends on nothing but its arguments, and any
slice of a global batch can be computed alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from archlab.data.streams import rng_for


class PackedSampler:
    """Windows of ``seq_len + 1`` tokens over a list of 1-D token arrays."""

    def __init__(self, arrays: list[np.ndarray], seq_len: int, what: str = "split"):
        self.arrays, self.seq_len = arrays, seq_len
        counts = np.array([max(0, (len(a) - 1) // seq_len) for a in arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # window index where each array begins
        self.n_windows = int(self.starts[-1])
        if self.n_windows == 0:
            raise ValueError(f"text {what} has {sum(len(a) for a in arrays)} tokens, fewer than seq_len+1={seq_len + 1}")
        self._permutation = lru_cache(maxsize=4)(self._make_permutation)

    def _make_permutation(self, seed: int, split: str, rank: int, epoch: int) -> np.ndarray:
        return rng_for(seed, split, rank, 0, epoch).permutation(self.n_windows)

    def window_ids(self, seed: int, split: str, rank: int, step: int, batch_size: int) -> np.ndarray:
        """Global window indices [B] of one batch."""
        pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epochs, within = np.divmod(pos, self.n_windows)
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(seed, split, rank, int(e))[within[sel]]
        return out

    def batch(self, seed: int, split: str, rank: int, step: int, batch_size: int) -> np.ndarray:
        """Token windows [B, T+1] (int64)."""
        ids = self.window_ids(seed, split, rank, step, batch_size)
        arr = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for row, (a, w) in enumerate(zip(arr, ids - self.starts[arr])):
            begin = int(w) * self.seq_len
            out[row] = self.arrays[a][begin : begin + self.seq_len + 1]
        return out
