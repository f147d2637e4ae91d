"""Ragged batches of task instances: generated in vectorised chunks, instance i is ``tokens[offsets[i]:offsets[i+1]]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

PAD = 0  # the padding token id of every synthetic task (never a loss target)


@dataclass
class Instances:
    """A ragged batch of instances, concatenated: instance i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # [S] int64
    mask: np.ndarray  # [S] bool, True at loss targets
    tag: np.ndarray  # [S] int32, task label per token (0 = none), e.g. the hop count of a Depo answer token
    lengths: np.ndarray  # [M] int64

    @staticmethod
    def empty() -> "Instances":
        return Instances(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int32), np.zeros(0, np.int64))

    @property
    def offsets(self) -> np.ndarray:  # [M+1]
        out = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        off = self.offsets
        return self.tokens[off[i] : off[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(np.split(self.tokens, self.offsets[1:-1]))

    def select(self, keep: np.ndarray) -> "Instances":
        """Instances where ``keep`` [M] bool is True, in order."""
        tok_keep = np.repeat(keep, self.lengths)
        return Instances(self.tokens[tok_keep], self.mask[tok_keep], self.tag[tok_keep], self.lengths[keep])

    @staticmethod
    def concat(parts: Sequence["Instances"]) -> "Instances":
        return Instances(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("tokens", "mask", "tag", "lengths")))


def segment_positions(lengths: np.ndarray) -> np.ndarray:
    """[S] position of every element inside its segment, for segments of the given lengths."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


def build_instances(
    items: np.ndarray,
    valid: np.ndarray,
    item_mask: np.ndarray,
    item_tag: np.ndarray,
    table: np.ndarray | None = None,
    table_len: np.ndarray | None = None,
) -> Instances:
    """Instances from item rows: instance i is the items ``items[i, valid[i]]`` in order.

    items, valid, item_mask, item_tag: [M, W]. An item is a token id, or, given ``table`` [R, Lmax] and
    ``table_len`` [R], a row index of ``table`` standing for ``table_len[r]`` tokens (a multi-token name, a
    template fragment); mask and tag of an item apply to all of its tokens.
    """
    rows = items[valid]  # [I], row-major: items of instance 0, then 1, ...
    inst = np.nonzero(valid)[0]  # [I]
    m_item, t_item = item_mask[valid], item_tag[valid].astype(np.int32)
    if table is None:
        return Instances(rows.astype(np.int64), m_item, t_item, np.bincount(inst, minlength=len(items)).astype(np.int64))
    lens = table_len[rows]  # [I]
    item_of_tok = np.repeat(np.arange(len(rows)), lens)  # [S]
    tokens = table[rows[item_of_tok], segment_positions(lens)].astype(np.int64)
    lengths = np.bincount(inst, weights=lens, minlength=len(items)).astype(np.int64)
    return Instances(tokens, m_item[item_of_tok], t_item[item_of_tok], lengths)
