"""Random draws shared by the synthetic tasks' generators (vectorised over instances)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


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
