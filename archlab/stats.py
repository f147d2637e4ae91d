"""Statistics of paired seed comparisons: Student-t intervals, the exact sign-flip test, seeds for a given power.

Standard library only. The Student-t quantile is exact for the integer degrees of freedom that seed counts give:
the CDF has a closed form for integer df (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

Z = statistics.NormalDist()


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1 (closed form, A&S 26.7.3 / 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_cdf: df must be a positive integer, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: A = 2/pi * (theta + sin * cos * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, acc = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= (2 * j) / (2 * j + 1) * c2
            acc += term
        central = 2 / math.pi * (theta + s * math.cos(theta) * acc)
    else:  # even: A = sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, acc = 1.0, 1.0
        for j in range(1, df // 2):
            term *= (2 * j - 1) / (2 * j) * c2
            acc += term
        central = s * acc
    return 0.5 + math.copysign(central / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided paired permutation (sign-flip) test of mean(diffs) = 0 (2^n sign patterns)."""
    observed = abs(statistics.fmean(diffs))
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    extreme = sum(abs(statistics.fmean(s * d for s, d in zip(signs, diffs))) >= observed - 1e-12 for signs in flips)
    return extreme / len(flips)


def seeds_for_power(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Paired seeds a two-sided test at level ``alpha`` needs to detect a mean difference ``delta`` with the given
    ``power`` when the differences have standard deviation ``sd``: n = ((z_{1-alpha/2} + z_{power}) * sd / delta)^2,
    rounded up (the normal approximation; a t-test needs one or two more). None when delta is 0."""
    if delta == 0:
        return None
    if sd == 0:
        return 2
    return max(2, math.ceil(((Z.inv_cdf(1 - alpha / 2) + Z.inv_cdf(power)) * sd / abs(delta)) ** 2))


@dataclass(frozen=True)
class PairedEffect:
    """treatment - baseline over paired seeds: mean, sd of the differences, 95% t-interval, sign-flip p."""

    diffs: tuple[float, ...]
    mean: float
    sd: float
    lo: float
    hi: float
    p: float | None  # exact sign-flip p (None above 16 pairs)
    seeds_80: int | None  # seeds for 80% power at this mean and sd

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired_effect(diffs: list[float], level: float = 0.95) -> PairedEffect:
    """Mean difference with a two-sided Student-t interval at ``level`` (n - 1 df); needs two or more pairs."""
    if len(diffs) < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs, got {len(diffs)}")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    p = sign_flip_p(diffs) if len(diffs) <= 16 else None
    return PairedEffect(tuple(diffs), mean, sd, mean - half, mean + half, p, seeds_for_power(mean, sd))


def verdict(effect: PairedEffect | None, higher_is_better: bool) -> str:
    """'shown' iff the interval excludes zero on the better side; 'contradicted' iff it excludes zero on the
    worse side; else 'not shown' (also with no effect, e.g. fewer than 2 paired seeds)."""
    if effect is None:
        return "not shown"
    better, worse = (effect.lo > 0, effect.hi < 0) if higher_is_better else (effect.hi < 0, effect.lo > 0)
    return "shown" if better else "contradicted" if worse else "not shown"
