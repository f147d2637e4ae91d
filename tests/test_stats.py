"""Statistics of paired seed comparisons against tabulated values."""

import math

import pytest

from archlab.stats import paired_effect, seeds_for_power, sign_flip_p, t_cdf, t_quantile, verdict

# Student-t 0.975 quantiles (any table, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), 4 decimals.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 29: 2.0452}


@pytest.mark.parametrize("df,q", sorted(T975.items()))
def test_t_quantile_matches_the_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=5e-5)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=5e-5)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-5)


def test_t_cdf_closed_forms():
    assert t_cdf(0.0, 7) == 0.5
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))  # df 2: 1/2 + t / (2 sqrt(2 + t^2))
    assert t_quantile(0.9, 6) == pytest.approx(1.4398, abs=5e-5)
    with pytest.raises(ValueError):
        t_cdf(1.0, 2.5)


def test_paired_effect_interval_and_power():
    e = paired_effect([1.0, 2.0, 3.0])
    assert (e.mean, e.sd, e.n) == (2.0, 1.0, 3)
    half = 4.302653 / math.sqrt(3)
    assert (e.lo, e.hi) == (pytest.approx(2 - half, abs=1e-6), pytest.approx(2 + half, abs=1e-6))
    assert e.p == 0.25  # 2 of the 8 sign patterns are as extreme
    assert e.seeds_80 == 2  # ((1.95996 + 0.84162) * 1 / 2)^2 = 1.96 -> at least 2
    with pytest.raises(ValueError):
        paired_effect([1.0])


def test_seeds_for_power():
    # ((z_.975 + z_.8) * sd / delta)^2 = 7.849 * (sd / delta)^2
    assert seeds_for_power(0.5, 1.0) == 32  # 31.4 -> 32
    assert seeds_for_power(-0.01, 0.02) == 32  # the sign does not matter
    assert seeds_for_power(0.1, 0.1) == 8  # 7.85 -> 8
    assert seeds_for_power(0.0, 1.0) is None


def test_verdict_follows_the_interval_and_the_direction():
    down = paired_effect([-0.9, -0.8, -0.85])
    straddle = paired_effect([-0.9, 0.5, -0.1])
    assert verdict(down, higher_is_better=False) == "shown"
    assert verdict(down, higher_is_better=True) == "contradicted"
    assert verdict(straddle, higher_is_better=False) == "not shown"
    assert verdict(None, higher_is_better=False) == "not shown"


def test_sign_flip_p_is_exact_for_five_pairs():
    assert sign_flip_p([1.0, 1.0, 1.0, 1.0, 1.0]) == 2 / 32
    assert sign_flip_p([1.0, -1.0, 1.0, -1.0, 0.5]) == 1.0
