"""The statistics of the A/B report against values worked out by hand (and, for the quantiles, against PromQL's
``histogram_quantile`` rules)."""

from __future__ import annotations

import math

import pytest

from service.stats import Z_95, histogram_quantile, two_proportion_z_test, wilson_interval

INF = math.inf


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.71673, half-width 0.22658
    assert wilson_interval(8, 10, z=1.96) == pytest.approx((0.49016, 0.94331), abs=1e-5)
    # no successes: [0, z² / (n + z²)]; all successes: the mirror image
    assert wilson_interval(0, 10, z=1.96) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)))
    assert wilson_interval(10, 10, z=1.96) == pytest.approx((10 / (10 + 1.96**2), 1.0))
    # the default z is the exact two-sided 95 % quantile, and a large sample narrows to the proportion
    assert math.erfc(Z_95 / math.sqrt(2)) == pytest.approx(0.05, abs=1e-12)
    low, high = wilson_interval(500_000, 1_000_000)
    assert low < 0.5 < high and high - low == pytest.approx(2 * Z_95 * 0.5 / 1000, rel=1e-3)


def test_wilson_interval_degenerate_and_invalid():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def test_two_proportion_z_test_by_hand():
    # 45/50 against 35/50: pooled 0.8, standard error sqrt(0.8 * 0.2 * (1/50 + 1/50)) = 0.08, z = 0.2 / 0.08 = 2.5
    test = two_proportion_z_test(45, 50, 35, 50)
    assert test.difference == pytest.approx(0.2)
    assert test.z == pytest.approx(2.5)
    assert test.p_value == pytest.approx(0.0124193, abs=1e-7)  # 2 * (1 - Phi(2.5))
    swapped = two_proportion_z_test(35, 50, 45, 50)
    assert swapped.z == pytest.approx(-2.5) and swapped.p_value == pytest.approx(test.p_value)
    assert two_proportion_z_test(30, 60, 15, 30).p_value == pytest.approx(1.0)  # equal proportions


def test_two_proportion_z_test_degenerate_and_invalid():
    assert two_proportion_z_test(0, 0, 5, 10) is None
    assert two_proportion_z_test(5, 10, 0, 0) is None
    # every answer right on both sides (or wrong on both): no variance, no evidence of a difference
    assert two_proportion_z_test(10, 10, 20, 20) == (0.0, 0.0, 1.0)
    assert two_proportion_z_test(0, 10, 0, 20) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_z_test(11, 10, 1, 2)


BUCKETS = [(0.1, 10), (0.2, 30), (0.5, 40), (INF, 40)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 0.04),  # rank 4 in the first bucket, which starts at 0: 0.1 * 4 / 10
        (0.5, 0.15),  # rank 20: 10 into the second bucket's 20, 0.1 + 0.1 * 10 / 20
        (0.95, 0.44),  # rank 38: 8 into the third's 10, 0.2 + 0.3 * 8 / 10
        (1.0, 0.5),  # rank 40: the top of the last finite bucket holding it
        (0.0, 0.0),
    ],
)
def test_histogram_quantile_interpolates_inside_the_bucket(q, expected):
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_histogram_quantile_edge_cases():
    # a rank in the +Inf bucket gives the highest finite bound, as PromQL does
    assert histogram_quantile(0.9, [(0.1, 5), (INF, 10)]) == 0.1
    # the order of the buckets does not matter; counts that dip are forced monotonic
    assert histogram_quantile(0.5, list(reversed(BUCKETS))) == pytest.approx(0.15)
    assert histogram_quantile(0.5, [(0.1, 5), (0.2, 4), (INF, 10)]) == 0.1
    # a first bucket bounded at or below zero answers its bound
    assert histogram_quantile(0.2, [(-1.0, 3), (1.0, 10), (INF, 10)]) == -1.0
    # a leading empty bucket: q = 0 lands at its start instead of PromQL's NaN (0 / 0)
    assert histogram_quantile(0.0, [(0.1, 0), (0.2, 5), (INF, 5)]) == 0.0
    # nothing to say: no observations, no +Inf bucket, too few buckets
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3), (0.2, 5)]) is None
    assert histogram_quantile(0.5, [(INF, 5)]) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, BUCKETS)
