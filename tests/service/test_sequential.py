"""The always-valid statistics: formulas against hand-worked values, their shape (monotone in evidence, sensible at
the edges), and coverage under continuous monitoring in a seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import sequential
from service.sequential import Bounds


def test_half_width_is_the_normal_mixture_boundary():
    # s^2 = 0.01, tau = 0.1, alpha = 0.05: sqrt(0.01 * 0.02 / 0.01 * (2 ln 20 + ln 2)) = sqrt(0.02 * 6.6846)
    assert sequential.half_width(0.01, 0.05, 0.1) == pytest.approx(math.sqrt(0.02 * (2 * math.log(20) + math.log(2))))
    assert sequential.half_width(0.0) == 0.0 and sequential.half_width(math.inf) == math.inf
    with pytest.raises(ValueError):
        sequential.half_width(0.01, alpha=1.0)


def test_the_interval_is_where_the_msprt_does_not_reject():
    estimate, variance, tau, alpha = 0.03, 0.0004, 0.05, 0.05
    h = sequential.half_width(variance, alpha, tau)
    at_edge = sequential.mixture_ratio(estimate, estimate - h, variance, tau)
    assert at_edge == pytest.approx(1 / alpha)
    assert sequential.mixture_ratio(estimate, estimate - 0.9 * h, variance, tau) < 1 / alpha
    assert sequential.mixture_ratio(estimate, estimate - 1.1 * h, variance, tau) > 1 / alpha


@pytest.mark.parametrize("variance", [1e-6, 7e-4, 0.01, 0.5])
def test_a_one_sided_bound_is_where_the_half_normal_mixture_rejects(variance):
    """The one-sided end lies where Lambda+ reaches 1/alpha: between the two-sided ends at 2 alpha and at alpha
    (narrower than the two-sided one, the point of asking one side)."""
    tau, alpha = 0.05, 0.05
    h = sequential.half_width(variance, alpha, tau, one_sided=True)
    assert sequential.one_sided_ratio(h, 0.0, variance, tau) == pytest.approx(1 / alpha)
    assert sequential.one_sided_ratio(0.99 * h, 0.0, variance, tau) < 1 / alpha
    assert sequential.half_width(variance, 2 * alpha, tau) <= h < sequential.half_width(variance, alpha, tau)
    assert (
        sequential.half_width(0.0, one_sided=True) == 0.0
        and sequential.half_width(math.inf, one_sided=True) == math.inf
    )


def test_intervals_shrink_with_evidence_and_widen_with_confidence():
    widths = [sequential.half_width(0.2 / n) for n in (10, 100, 1000, 10_000)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02
    assert sequential.half_width(0.001, alpha=0.01) > sequential.half_width(0.001, alpha=0.05)
    # wider than the fixed-horizon 95 % interval at every sample size: the price of looking at will
    assert all(sequential.half_width(0.25 / n) > 1.96 * math.sqrt(0.25 / n) for n in (10, 100, 10_000, 10**6))


def test_proportion_difference_edges():
    assert sequential.proportion_difference(0, 0, 5, 10) is None
    same = sequential.proportion_difference(20, 20, 20, 20)
    assert same.estimate == 0 and same.low < 0 < same.high  # all right on both: not an exact zero
    clipped = sequential.proportion_difference(0, 10, 10, 10)
    assert clipped.low == -1.0 and clipped.estimate == -1.0
    with pytest.raises(ValueError):
        sequential.proportion_difference(11, 10, 1, 10)


def test_decisions():
    assert sequential.decide(Bounds(0.05, 0.01, 0.09), 0.02, 100, 100) == "better"
    assert sequential.decide(Bounds(0.0, -0.01, 0.01), 0.02, 100, 100) == "non-inferior"
    assert sequential.decide(Bounds(-0.1, -0.15, -0.05), 0.02, 100, 100) == "worse"
    assert sequential.decide(Bounds(-0.02, -0.05, 0.01), 0.02, 100, 100) == "collecting"
    assert sequential.decide(Bounds(-0.1, -0.15, -0.05), 0.02, 100, 5) == "collecting"  # too few on one arm
    assert sequential.decide(None, 0.02, 0, 0) == "collecting"


def test_a_clearly_worse_variant_is_called_worse_and_a_equal_one_non_inferior():
    worse = sequential.proportion_difference(800, 1000, 9000, 10_000)
    assert sequential.decide(worse, 0.02, 1000, 10_000) == "worse"
    equal = sequential.proportion_difference(9000, 10_000, 9000, 10_000)
    assert sequential.decide(equal, 0.02, 10_000, 10_000) == "non-inferior"


def test_bounded_mean_is_exact_for_a_constant_and_inside_the_range():
    constant = sequential.bounded_mean(5 * 1000.0, 5, 1000.0)
    assert constant == Bounds(1000.0, 1000.0, 1000.0)
    varied = sequential.bounded_mean(300.0, 10, 100.0)
    assert 0 <= varied.low < 30 < varied.high <= 100
    assert sequential.bounded_mean(0, 0, 100.0) is None


def test_quantile_bounds_from_histogram_buckets():
    # 10,000 observations: 9,000 at most 0.01 s, 950 more at most 0.05 s, 50 more at most 0.1 s, none above
    buckets = [(0.01, 9000.0), (0.05, 9950.0), (0.1, 10_000.0), (math.inf, 10_000.0)]
    p99 = sequential.quantile_bounds(0.99, buckets)
    assert p99.low < p99.estimate < p99.high <= 0.1
    assert p99.estimate == pytest.approx(0.01 + 0.04 * 900 / 950)
    # the bounds are bucket edges: where inside its bucket a quantile lies is not known, so only an edge bounds it
    assert (p99.low, p99.high) == (0.01, 0.05)
    one_sided = sequential.quantile_bounds(0.99, buckets, one_sided=True)
    assert one_sided.low in (0.01, 0.05) and one_sided.high in (0.05, 0.1)
    few = [(0.01, 90.0), (0.05, 99.0), (0.1, 100.0), (math.inf, 100.0)]
    assert sequential.quantile_bounds(0.99, few).high is None  # 100 observations cannot bound a p99 from above
    assert sequential.quantile_bounds(0.99, [(0.01, 0.0), (math.inf, 0.0)]) is None


def test_ratio_bounds():
    ratio = sequential.ratio_bounds(Bounds(2.0, 1.0, 3.0), Bounds(1.0, 0.5, 2.0))
    assert ratio == Bounds(2.0, 0.5, 6.0)
    assert sequential.ratio_bounds(Bounds(2.0, 1.0, None), Bounds(1.0, 0.0, 2.0)).high is None


STREAMS, LOOKS, P1, P2 = 300, 2000, 0.85, 0.9
SLACK = 2 * math.sqrt(0.05 * 0.95 / STREAMS)  # Monte-Carlo slack on a 5 % rate over STREAMS streams


def streams(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded A/A-style streams of LOOKS feedbacks on each of two arms with true accuracies P1 and P2: the running
    successes of each arm, and the feedback count at each look."""
    rng = np.random.default_rng(seed)
    x1 = np.cumsum(rng.random((STREAMS, LOOKS)) < P1, axis=1)
    x2 = np.cumsum(rng.random((STREAMS, LOOKS)) < P2, axis=1)
    return x1, x2, np.arange(1, LOOKS + 1)


def test_coverage_under_continuous_monitoring():
    """300 seeded streams of 2,000 feedbacks on each arm, every look checked: the share of streams whose interval
    ever misses the true difference stays at most alpha (plus Monte-Carlo slack), where the fixed-horizon z interval
    looked at the same way misses far more often."""
    x1, x2, n = streams(7)
    ever_missed = np.zeros(STREAMS, dtype=bool)
    ever_missed_fixed = np.zeros(STREAMS, dtype=bool)
    for i in range(sequential.MIN_FEEDBACK - 1, LOOKS, 7):  # every 7th look keeps the test quick
        for s in range(STREAMS):
            b = sequential.proportion_difference(x1[s, i], n[i], x2[s, i], n[i])
            ever_missed[s] |= not b.low <= P1 - P2 <= b.high
        d = x1[:, i] / n[i] - x2[:, i] / n[i]
        se = np.sqrt(sequential.smoothed_variance(x1[:, i], n[i]) / n[i] * 2)
        ever_missed_fixed |= np.abs(d - (P1 - P2)) > 1.96 * se
    assert ever_missed.mean() <= 0.05 + SLACK
    assert ever_missed_fixed.mean() > 0.2


def test_one_sided_coverage_under_continuous_monitoring():
    """The rollout's bounds: streams as above, every 13th look; the upper one-sided bound ever below the true
    difference (a wrong rollback) in at most alpha of them, and likewise the lower one above it."""
    x1, x2, n = streams(11)
    below, above = np.zeros(STREAMS, dtype=bool), np.zeros(STREAMS, dtype=bool)
    for i in range(sequential.MIN_FEEDBACK - 1, LOOKS, 13):
        for s in range(STREAMS):
            b = sequential.proportion_difference(x1[s, i], n[i], x2[s, i], n[i], one_sided=True)
            below[s] |= b.high < P1 - P2
            above[s] |= b.low > P1 - P2
    assert below.mean() <= 0.05 + SLACK and above.mean() <= 0.05 + SLACK
