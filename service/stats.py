"""The few statistics an A/B report needs, in plain ``math`` (no scipy): interval estimates of a proportion, a test
of two proportions, and quantiles from cumulative histogram buckets as Prometheus computes them.

Every function answers degenerate input (no observations, all-equal outcomes) with a defined value instead of
dividing by zero: ``None`` where nothing can be said, the exact answer where one exists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

Z_95 = 1.959963984540054  # the two-sided 95 % quantile of the standard normal


class Interval(NamedTuple):
    low: float
    high: float


class ProportionTest(NamedTuple):
    difference: float  # p1 - p2
    z: float
    p_value: float  # two-sided


def wilson_interval(successes: float, n: float, z: float = Z_95) -> Interval | None:
    """The Wilson score interval of the proportion ``successes / n`` (Wilson 1927): unlike the normal approximation
    it stays inside [0, 1] and is not zero-wide at 0 or n successes, which matters for small feedback counts.
    ``None`` for n = 0 (every proportion is as likely)."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n, got {successes} of {n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z_test(x1: float, n1: float, x2: float, n2: float) -> ProportionTest | None:
    """The pooled two-proportion z-test of ``x1 / n1`` against ``x2 / n2``, two-sided. ``None`` if either sample is
    empty; z = 0 and p = 1 when the pooled proportion is 0 or 1 (both samples all failures or all successes: no
    evidence of a difference, and no variance to divide by)."""
    for x, n in ((x1, n1), (x2, n2)):
        if not 0 <= x <= n:
            raise ValueError(f"successes must be between 0 and n, got {x} of {n}")
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return ProportionTest(p1 - p2, 0.0, 1.0)
    z = (p1 - p2) / math.sqrt(variance)
    return ProportionTest(p1 - p2, z, math.erfc(abs(z) / math.sqrt(2)))


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of a histogram given as (upper bound, cumulative count) pairs, one of them +Inf, the way
    PromQL's ``histogram_quantile`` computes it: find the bucket the rank falls in and interpolate linearly
    inside it (the first bucket starts at 0 when its bound is positive); a rank in the +Inf bucket gives the
    highest finite bound. Counts are forced monotonic first, as Prometheus does. ``None`` without observations or
    without a +Inf bucket (Prometheus: NaN)."""
    located = _locate(q, buckets)
    if located is None:
        return None
    bounds, counts, b = located
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b > 0 else 0.0
    below = counts[b - 1] if b > 0 else 0.0
    in_bucket = counts[b] - below
    if in_bucket == 0:  # only for q = 0 with empty leading buckets (PromQL gives NaN for 0/0)
        return start
    return start + (bounds[b] - start) * (q * counts[-1] - below) / in_bucket


def histogram_bucket(q: float, buckets: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """The edges (lower, upper) of the bucket the ``q``-quantile's rank falls in, found as ``histogram_quantile``
    finds it (the first bucket's lower edge is 0; the +Inf bucket's lower edge is the highest finite bound). ``None``
    as there."""
    located = _locate(q, buckets)
    if located is None:
        return None
    bounds, _, b = located
    return (bounds[b - 1] if b > 0 else 0.0), bounds[b]


def _locate(q: float, buckets: Iterable[tuple[float, float]]) -> tuple[list[float], list[float], int] | None:
    """The sorted bounds, the counts forced monotonic, and the index of the first bucket whose count reaches the
    rank ``q * total`` (the +Inf bucket if no finite one does)."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds = [bound for bound, _ in ordered]
    counts, running = [], 0.0
    for _, count in ordered:
        running = max(running, count)
        counts.append(running)
    if counts[-1] == 0:
        return None
    rank = q * counts[-1]
    b = next((i for i, count in enumerate(counts[:-1]) if count >= rank), len(counts) - 1)
    return bounds, counts, b
