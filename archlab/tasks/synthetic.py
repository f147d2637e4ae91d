"""The base of the synthetic tasks (Physics of LM 4.1, spec §2.0): a task generates instances
(:mod:`archlab.tasks.instances`); this adds the split partition, packing into windows and batches
(:mod:`archlab.tasks.packing`)."""

from __future__ import annotations

import math
from abc import abstractmethod
from functools import cached_property
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from archlab.data.streams import SPLITS, rng_for
from archlab.tasks.base import Batch, Task, TaskConfig
from archlab.tasks.instances import Instances
from archlab.tasks.packing import SPLIT_BUCKETS, Packing, Windows, instance_split, pack_windows


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
