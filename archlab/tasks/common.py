"""Shared machinery of the synthetic tasks (Physics of LM 4.1, spec §2.0).

* Instances are generated in vectorised chunks as ragged arrays (:class:`Instances`).
* Train/val/test are a partition of the *instance space* by a hash of each instance's tokens, so two splits
  can never share an instance, whatever the seeds (tasks may opt out, e.g. Capo, whose test set is by
  definition the training population).
* Instances are packed left-aligned into windows of T+1 tokens: every window starts at an instance
  boundary, so its first instance is never truncated. ``packing="truncate"`` (the paper's) fills the window
  and cuts the last instance; ``packing="pad"`` keeps whole instances only and pads the tail (masked out).
* Shared pieces of the task definitions: multi-token names, the size law P(n) ∝ 1/(n+√N), random row
  permutations, and helpers for exact evaluation (teacher-forced scoring, ragged greedy decoding).
"""

from __future__ import annotations

import bisect
import math
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable, ClassVar, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from archlab.tasks.base import SPLITS, Batch, Task, TaskConfig, rng_for

PAD = 0
Packing = Literal["truncate", "pad"]

# Hash buckets (of 100) per split: 80% of the instance space trains, 10% validates, 10% tests.
SPLIT_BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}


class SyntheticConfig(TaskConfig):
    """Fields shared by the synthetic tasks."""

    packing: Packing = "truncate"


def apply_preset(cls: type[TaskConfig], data: Any, presets: dict[str, dict[str, Any]], key: str = "variant") -> Any:
    """Body of a ``model_validator(mode="before")``: at construction, fields not given are taken from
    ``presets[data[key]]`` (later assignments to ``key`` change nothing else)."""
    if isinstance(data, dict) and data.get(key) in presets:
        merged, order = {**presets[data[key]], **data}, list(cls.model_fields)
        data = dict(sorted(merged.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1))  # field order
    return data


# ----------------------------------------------------------------------------------------------- ragged arrays


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


def random_perm_rows(rng: np.random.Generator, n: np.ndarray, width: int) -> np.ndarray:
    """[M, width]: row i starts with a uniform random permutation of 0..n[i]-1 (the rest is arbitrary)."""
    keys = rng.random((len(n), width))
    keys[np.arange(width)[None, :] >= n[:, None]] = 2.0
    return np.argsort(keys, axis=1)


@lru_cache(maxsize=64)
def _size_cdf(n_min: int, n_max: int) -> np.ndarray:
    w = 1.0 / (np.arange(n_min, n_max + 1) + math.sqrt(n_max))
    return np.cumsum(w / w.sum())


def sample_sizes(rng: np.random.Generator, n_min: int, n_max: int, count: int) -> np.ndarray:
    """[count] sizes n in {n_min..n_max} with P(n) ∝ 1/(n + √n_max) [P App A; spec §2.0]."""
    cdf = _size_cdf(n_min, n_max)
    return n_min + np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), len(cdf) - 1)


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """[K] bool: keys[k] differs from every earlier key."""
    first = np.zeros(len(keys), bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


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


# --------------------------------------------------------------------------------------- split partition, packing

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


class SyntheticTask(Task):
    """A task whose instances come from :meth:`generate`: adds the split partition, packing and batches."""

    cfg: SyntheticConfig
    hash_split: ClassVar[bool] = True  # False: every split draws from the same instance space (Capo)

    @abstractmethod
    def generate(self, rng: np.random.Generator, split: str, count: int) -> Instances:
        """``count`` instances of the split's distribution (before the hash partition)."""

    def stream(self, split: str, seed: int, rank: int, step: int) -> Callable[[int], Instances]:
        """draw(count) -> about ``count`` instances of ``split`` (fewer if some do not fit a window)."""
        rng = rng_for(seed, split, rank, step)
        lo, hi = SPLIT_BUCKETS[split]
        frac = (hi - lo) / 100 if self.hash_split else 1.0
        want = SPLITS.index(split)

        def draw(count: int) -> Instances:
            inst = self.generate(rng, split, math.ceil(count / frac))
            keep = inst.lengths <= self.seq_len + 1
            if self.hash_split:
                keep &= self.split_of(inst) == want
            return inst.select(keep)

        return draw

    def split_of(self, inst: Instances) -> np.ndarray:
        """[M] index into SPLITS of the split each instance belongs to (default: by a hash of its tokens)."""
        return instance_split(inst)

    @cached_property
    def per_window(self) -> float:
        """Expected instances a window uses up, from a fixed sample of lengths L: (T+1)/E[L] whole ones plus the
        one cut off (or left out) at the end, E[L²]/(2E[L]²) by the renewal formula. Sizes the draws."""
        lengths = self.generate(np.random.default_rng(0), "train", 2048).lengths.astype(float)
        fits = lengths[lengths <= self.seq_len + 1]
        if not len(fits):
            return 1.0
        mean = fits.mean()
        return (self.seq_len + 1) / mean + (fits**2).mean() / (2 * mean**2)

    def instances(self, split: str, seed: int, rank: int, step: int, count: int) -> Instances:
        """The first ``count`` instances of a stream (those that fit a window)."""
        draw, parts, have = self.stream(split, seed, rank, step), [], 0
        while have < count:
            parts.append(draw(count - have))
            have += len(parts[-1])
            if len(parts) > 50 and not have:
                raise RuntimeError("no instance fits the window; increase seq_len or shrink the task")
        inst = Instances.concat(parts)
        return inst.select(np.arange(len(inst)) < count)

    def windows(
        self, split: str, seed: int, rank: int, step: int, batch_size: int, packing: Packing | None = None
    ) -> Windows:
        """tokens, mask, tag, doc as numpy arrays [B, T+1]."""
        stream = self.stream(split, seed, rank, step)
        return pack_windows(stream, batch_size, self.seq_len + 1, packing or self.cfg.packing, self.per_window)

    def batch(self, split: str, seed: int, rank: int, step: int, batch_size: int) -> Batch:
        win = self.windows(split, seed, rank, step, batch_size)
        return Batch(torch.from_numpy(win.tokens), torch.from_numpy(win.mask), self.doc_ids_if_masked(win.doc))


# ------------------------------------------------------------------------------------------------------ evaluation


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
