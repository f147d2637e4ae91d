"""Deterministic streams: every batch of every task is drawn from a seed derived from (seed, split, rank, step)."""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "val", "test")


def stream_seed(seed: int, split: str, rank: int, step: int, *extra: int) -> int:
    """A 63-bit seed derived from (seed, split, rank, step, ...) by hashing: streams never collide."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    key = f"{seed}/{split}/{rank}/{step}/" + "/".join(map(str, extra))
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def rng_for(seed: int, split: str, rank: int, step: int, *extra: int) -> np.random.Generator:
    """numpy Generator for one (seed, split, rank, step) point of a stream."""
    return np.random.default_rng(stream_seed(seed, split, rank, step, *extra))
