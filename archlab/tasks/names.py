"""Multi-token names [P fn 29; spec §2.0]: the name vocabulary, names for graph nodes, the config check of the
name space, and rendering token sequences with their names joined."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from archlab.tasks.instances import PAD, segment_positions
from archlab.tasks.sampling import first_occurrence, random_perm_rows


@dataclass(frozen=True)
class NameVocab:
    """Multi-token names [P fn 29; spec §2.0]: length ℓ ~ U[min_len, max_len]; the first ℓ−1 tokens are
    'inner' ids, the last a 'final' id (an end-of-name marker, so names parse unambiguously), each drawn
    uniformly from ``v`` choices; names of one instance are distinct. Single-token names (max_len = 1) use
    only the ``v`` final ids. Ids start at ``offset``.
    """

    offset: int
    v: int
    min_len: int
    max_len: int

    def __post_init__(self) -> None:
        if (2 * self.v + 1) ** self.max_len >= 2**40:
            raise ValueError(f"names of up to {self.max_len} tokens over {self.v} choices are too many to index")

    @property
    def n_inner(self) -> int:
        return self.v if self.max_len > 1 else 0

    @property
    def n_tokens(self) -> int:
        return self.n_inner + self.v

    @property
    def n_names(self) -> int:
        return sum(self.v**ln for ln in range(self.min_len, self.max_len + 1))

    def is_name(self, tok: np.ndarray | int) -> np.ndarray | bool:
        return (tok >= self.offset) & (tok < self.offset + self.n_tokens)

    def is_final(self, tok: np.ndarray | int) -> np.ndarray | bool:
        return (tok >= self.offset + self.n_inner) & (tok < self.offset + self.n_tokens)

    def split(self, tokens: Sequence[int]) -> list[tuple[int, ...]]:
        """Parse a run of name tokens into names; ValueError on a non-name token or an unfinished name."""
        names, cur = [], []
        for t in tokens:
            if not self.is_name(t):
                raise ValueError(f"token {t} is not a name token")
            cur.append(int(t))
            if self.is_final(t):
                if not self.min_len <= len(cur) <= self.max_len:
                    raise ValueError(f"name {cur} has a length outside [{self.min_len}, {self.max_len}]")
                names.append(tuple(cur))
                cur = []
        if cur:
            raise ValueError(f"unfinished name {cur}")
        return names

    def render(self, tok: int) -> str:
        """Inner tokens print as 'i.', final ones as 'i', so a name reads '3.41.7'."""
        rel = tok - self.offset
        return f"{rel}." if rel < self.n_inner else str(rel - self.n_inner)

    def sample(self, rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """counts[i] distinct names for each group i -> (table [G, max_len] padded with 0, lengths [G]), G = Σ counts.

        Groups come in order. Multi-token names follow sequential rejection (draw a name, drop it if the
        group already has it), vectorised over groups in rounds.
        """
        counts = np.asarray(counts, np.int64)
        if counts.max(initial=0) > self.n_names:
            raise ValueError(f"cannot draw {counts.max()} distinct names from {self.n_names}")
        if self.max_len == 1:
            order = random_perm_rows(rng, np.full(len(counts), self.v), self.v)  # [M, v]
            take = np.arange(self.v)[None, :] < counts[:, None]
            return (order[take] + self.offset + self.n_inner)[:, None], np.ones(int(counts.sum()), np.int64)
        base = (2 * self.v + 1) ** np.arange(self.max_len + 1)  # name code: digits (token - offset + 1), PAD = 0
        toks, lens, keys = [], [], []
        need = counts
        while True:
            c = np.where(need > 0, need + need // 2 + 2, 0)  # candidates per group this round
            grp = np.repeat(np.arange(len(counts)), c)  # [K]
            ln = rng.integers(self.min_len, self.max_len + 1, len(grp))
            rel = rng.integers(1, self.v + 1, (len(grp), self.max_len))
            rel[np.arange(self.max_len)[None, :] >= ln[:, None] - 1] = 0
            rel[np.arange(len(grp)), ln - 1] = rng.integers(1, self.v + 1, len(grp)) + self.v
            toks.append(np.where(rel > 0, rel + self.offset - 1, PAD)), lens.append(ln)
            keys.append(grp * base[-1] + rel @ base[:-1])  # (group, name) as one int64
            all_keys = np.concatenate(keys)
            first = first_occurrence(all_keys)
            all_grp = all_keys // base[-1]
            got = np.bincount(all_grp[first], minlength=len(counts))
            if (got >= counts).all():
                break
            need = np.maximum(counts - got, 0)
        idx = np.nonzero(first)[0]
        idx = idx[np.argsort(all_grp[idx], kind="stable")]  # grouped, generation order within a group
        rank = segment_positions(np.bincount(all_grp[idx], minlength=len(counts)))
        idx = idx[rank < counts[all_grp[idx]]]
        return np.concatenate(toks)[idx], np.concatenate(lens)[idx].astype(np.int64)


def node_names(
    rng: np.random.Generator, names: NameVocab, n: np.ndarray, n_special: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct names for the n[i] nodes of each instance, for :func:`build_instances`.

    Returns (table [R, max_len], table_len [R], node_row [M, W]): rows 0..n_special-1 of the item table are
    the special tokens themselves, then come the names; node j of instance i is named by row node_row[i, j]
    (a random assignment, W = max n).
    """
    name_tab, name_len = names.sample(rng, n)  # [Σn, max_len]
    table = np.zeros((n_special + len(name_tab), names.max_len), np.int64)
    table[:n_special, 0] = np.arange(n_special)
    table[n_special:] = name_tab
    table_len = np.concatenate([np.ones(n_special, np.int64), name_len])
    node_row = n_special + (np.cumsum(n) - n)[:, None] + random_perm_rows(rng, n, int(n.max()))
    return table, table_len, node_row


def render_tokens(tokens: Sequence[int], names: NameVocab, specials: dict[int, str]) -> str:
    """Space-separated rendering: multi-token names joined ('3.41.7'), special tokens by name, others as ids."""
    parts, cur = [], ""
    for t in map(int, tokens):
        if names.is_name(t):
            cur += names.render(t)
            if names.is_final(t):
                parts.append(cur)
                cur = ""
            continue
        if cur:
            parts.append(cur)
            cur = ""
        parts.append(specials.get(t, f"#{t}"))
    return " ".join(parts + [cur] if cur else parts)


def check_name_space(n_min: int, n_max: int, name_min_len: int, name_max_len: int, vocab: int) -> None:
    """Config check shared by the graph tasks: sane ranges and at least n_max distinct names."""
    if not n_min <= n_max or not name_min_len <= name_max_len:
        raise ValueError("need n_min <= n_max and name_min_len <= name_max_len")
    if NameVocab(0, vocab, name_min_len, name_max_len).n_names < n_max:
        raise ValueError(
            f"mini_vocab={vocab} with names of {name_min_len}-{name_max_len} tokens has fewer than n_max={n_max} names"
        )
