"""Always-valid (sequential) inference for A/B tests, in plain ``math``: confidence sequences that stay valid however
often they are looked at and whenever the looking stops, unlike a fixed-horizon z-test's p-value.

A *confidence sequence* (CS) at level 1 - alpha is a sequence of intervals C_1, C_2, ... with
P(the true value is in C_n for every n at once) >= 1 - alpha; so an operator may watch it after every feedback and
act the first time it excludes a value, and the chance of ever acting wrongly stays at most alpha.

The one boundary used here is the two-sided **normal mixture** (Robbins 1970). For an estimate d_n that is
approximately N(theta, s_n^2), the mixture over theta' ~ N(theta, tau^2) of the likelihood ratios of theta' against
theta is

    Lambda_n(theta) = sqrt(s_n^2 / (s_n^2 + tau^2)) * exp(tau^2 (d_n - theta)^2 / (2 s_n^2 (s_n^2 + tau^2))),

a nonnegative martingale under theta with mean 1, so by Ville's inequality P(sup_n Lambda_n >= 1/alpha) <= alpha.
This is the mixture SPRT (mSPRT) of Johari, Koomen, Pekelis & Walsh, "Always valid inference: continuous monitoring
of A/B tests", Operations Research 70(3), 2022 (arXiv:1512.04922), section 4, the test behind Optimizely's Stats
Engine; there ``s_n^2 = V / n`` for two equal arms. Inverting ``Lambda_n(theta) < 1/alpha`` gives the CS

    d_n +- sqrt( s_n^2 (s_n^2 + tau^2) / tau^2 * (2 log(1/alpha) + log(1 + tau^2 / s_n^2)) ),

which with ``s_n^2 = sigma^2 / n`` is the normal-mixture confidence sequence of Howard, Ramdas, McAuliffe & Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021, eq. (14), and
with an estimated ``sigma`` the asymptotic CS of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform
central limit theory and asymptotic confidence sequences", Annals of Statistics 2024 (arXiv:2103.06476), Thm 2.2
(their ``rho^2 = tau^2 / sigma^4``). Variances are estimated from the data, so coverage is asymptotic (and, for
bounded quantities with a variance bound instead of an estimate, exact); ``blockdrop bench ab-simulation`` measures
it under continuous monitoring.

``tau`` is the scale of effects the test is tuned for: the CS is narrowest where ``s_n`` is about
``tau / sqrt(2 log(1/alpha) + log(1 + 2 log(1/alpha)))`` (Waudby-Smith et al., eq. (2.4)), and any ``tau`` keeps
the guarantee. With two arms of unequal size (a variant at a 5 % share against its baseline), ``s_n^2`` is the
variance of the difference, ``v_1 / n_1 + v_2 / n_2``, as in Johari et al.'s treatment of unequal allocation.

A rollout's guardrail asks one side at a time: roll back only if the variant is worse than the limit, advance only
if it is better. Each end is then a **one-sided** bound at level alpha (``one_sided=True``), from the half-normal
mixture over theta' > theta only (mixing weight 2 phi_tau), whose closed form is

    Lambda+_n(theta) = 2 Lambda_n(theta) Phi(tau (d_n - theta) / (s_n sqrt(s_n^2 + tau^2))),

again a nonnegative martingale with mean 1: P(the upper bound ever falls below theta) <= alpha, and the same for
the lower bound. It is narrower than the two-sided end (about the two-sided one at 2 alpha, since Phi is near 1
there), and a wrong rollback and a wrong advance each keep their chance at most alpha, as before.

Quantiles (p99 latency) use the construction of Howard & Ramdas, "Sequential estimation of quantiles with
applications to A/B-testing and best-arm identification", Bernoulli 28(3), 2022, section 2: the fraction of
observations at or below the true q-quantile is a mean of Bernoulli(q) indicators, so a CS ``q +- u_n`` for that
mean turns into a CS for the quantile, ``[Q_n(q - u_n), Q_n(q + u_n)]`` with Q_n the empirical quantile function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from service.stats import histogram_bucket, histogram_quantile

Decision = Literal["collecting", "non-inferior", "better", "worse"]

ALPHA = 0.05
ACCURACY_TAU = 0.05  # accuracy differences of a few points are what an A/B test of models looks for
RATIO_TAU = 0.1  # FLOPs fractions (of the baseline's network): savings of about ten points and more
MIN_FEEDBACK = 10  # per arm: below this no decision is made, whatever the interval says (normal approximation)


class Bounds(NamedTuple):
    """A confidence-sequence interval; ``None`` for an end that the data cannot bound yet."""

    estimate: float
    low: float | None
    high: float | None


def half_width(variance: float, alpha: float = ALPHA, tau: float = ACCURACY_TAU, one_sided: bool = False) -> float:
    """The normal-mixture CS half-width for an estimate of variance ``variance`` (``s_n^2`` above):
    ``sqrt(s^2 (s^2 + tau^2) / tau^2 * (2 log(1/alpha) + log(1 + tau^2 / s^2)))``; 0 for a zero variance (an exact
    estimate), infinite for an infinite one. Grows with the variance (less evidence, wider interval).
    ``one_sided``: the distance at which the half-normal mixture ``Lambda+`` reaches ``1 / alpha`` instead."""
    if one_sided:
        return _one_sided_half_width(variance, alpha, tau)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if variance < 0:
        raise ValueError(f"variance must be nonnegative, got {variance}")
    if variance == 0:
        return 0.0
    if math.isinf(variance):
        return math.inf
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log1p(t2 / variance)))


def _one_sided_half_width(variance: float, alpha: float, tau: float) -> float:
    """Where ``one_sided_ratio`` reaches ``1 / alpha``, by bisection: it grows with the distance, is below
    ``1 / alpha`` at the two-sided half-width for ``2 alpha`` (Phi <= 1) and at or above it at the one for ``alpha``
    (Phi >= 1/2 above the estimate)."""
    low, high = half_width(variance, min(2 * alpha, 0.999999), tau), half_width(variance, alpha, tau)
    if high in (0.0, math.inf):
        return high
    target = math.log(1 / alpha)
    for _ in range(100):
        middle = (low + high) / 2
        if _log_one_sided_ratio(middle, variance, tau) >= target:
            high = middle
        else:
            low = middle
        if high - low <= 1e-12 * high:
            break
    return high


def _log_one_sided_ratio(distance: float, variance: float, tau: float) -> float:
    t2 = tau * tau
    total = variance + t2
    z = tau * distance / math.sqrt(variance * total)
    log_phi = math.log(0.5 * math.erfc(-z / math.sqrt(2)))
    return math.log(2) + 0.5 * math.log(variance / total) + t2 * distance**2 / (2 * variance * total) + log_phi


def one_sided_ratio(estimate: float, null: float, variance: float, tau: float = ACCURACY_TAU) -> float:
    """The half-normal mixture ``Lambda+_n`` of ``null`` against values above it (for values below, swap the
    signs): the evidence that ``theta > null``, a nonnegative martingale with mean 1 under ``theta = null``."""
    if variance <= 0:
        return math.inf if estimate > null else 0.0
    return math.exp(_log_one_sided_ratio(estimate - null, variance, tau))


def mixture_ratio(estimate: float, null: float, variance: float, tau: float = ACCURACY_TAU) -> float:
    """The mSPRT statistic ``Lambda_n`` of ``null`` (Johari et al. 2022, eq. (8) in the Gaussian form above): the
    evidence against ``theta = null``; rejecting once it reaches ``1 / alpha`` is an always-valid test, and its
    always-valid p-value is ``min over looks of 1 / Lambda_n``."""
    if variance <= 0:
        return math.inf if estimate != null else 1.0
    t2 = tau * tau
    total = variance + t2
    return math.sqrt(variance / total) * math.exp(t2 * (estimate - null) ** 2 / (2 * variance * total))


def smoothed_variance(successes: float, n: float) -> float:
    """The Bernoulli variance ``p (1 - p)`` at ``p = (x + 1) / (n + 2)`` (Laplace's rule): never zero, so that
    twenty right answers out of twenty do not claim an exact accuracy."""
    p = (successes + 1) / (n + 2)
    return p * (1 - p)


def proportion_difference(
    x1: float,
    n1: float,
    x2: float,
    n2: float,
    alpha: float = ALPHA,
    tau: float = ACCURACY_TAU,
    one_sided: bool = False,
) -> Bounds | None:
    """Always-valid interval of ``p1 - p2`` from ``x1`` successes in ``n1`` and ``x2`` in ``n2`` (a variant's
    feedback against its baseline's): the mixture CS with ``s^2 = v1 / n1 + v2 / n2``. ``None`` if an arm is empty.
    The ends are clipped to [-1, 1]; with ``one_sided`` each is a one-sided bound at level ``alpha``."""
    for x, n in ((x1, n1), (x2, n2)):
        if not 0 <= x <= n:
            raise ValueError(f"successes must be between 0 and n, got {x} of {n}")
    if n1 == 0 or n2 == 0:
        return None
    d = x1 / n1 - x2 / n2
    h = half_width(smoothed_variance(x1, n1) / n1 + smoothed_variance(x2, n2) / n2, alpha, tau, one_sided)
    return Bounds(d, max(-1.0, d - h), min(1.0, d + h))


def proportion(
    x: float, n: float, alpha: float = ALPHA, tau: float = ACCURACY_TAU, one_sided: bool = False
) -> Bounds | None:
    """Always-valid interval of one proportion (an error rate), clipped to [0, 1]; ``None`` for n = 0. With
    ``one_sided`` each end is a one-sided bound at level ``alpha``."""
    if not 0 <= x <= n:
        raise ValueError(f"successes must be between 0 and n, got {x} of {n}")
    if n == 0:
        return None
    p = x / n
    h = half_width(smoothed_variance(x, n) / n, alpha, tau, one_sided)
    return Bounds(p, max(0.0, p - h), min(1.0, p + h))


def bounded_mean(
    total: float, n: float, upper: float, alpha: float = ALPHA, tau: float = RATIO_TAU, one_sided: bool = False
) -> Bounds | None:
    """Always-valid interval of the mean of observations in [0, ``upper``] from their sum and count only (FLOPs per
    image, known to lie between 0 and the network's): the variance is bounded by Bhatia-Davis,
    ``v <= mean (upper - mean)``, so no second moment is needed, and a constant (the full network's FLOPs) gets a
    zero-width interval. The mixture is tuned in units of ``upper``. ``None`` for n = 0. With ``one_sided`` each end
    is a one-sided bound at level ``alpha``."""
    if n == 0:
        return None
    if upper <= 0:
        raise ValueError(f"upper must be positive, got {upper}")
    mean = min(max(total / n, 0.0), upper)
    f = mean / upper
    h = half_width(f * (1 - f) / n, alpha, tau, one_sided) * upper
    return Bounds(mean, max(0.0, mean - h), min(upper, mean + h))


def decide(bounds: Bounds | None, margin: float, n1: float, n2: float, min_n: float = MIN_FEEDBACK) -> Decision:
    """The state of a comparison from the always-valid interval of ``variant - baseline`` (higher is better):
    ``better`` when the interval is above 0, ``non-inferior`` when it is above ``-margin``, ``worse`` when it is
    below ``-margin`` (worse by more than the margin; with margin 0, significantly worse), else ``collecting``;
    ``collecting`` too while either arm has fewer than ``min_n`` observations."""
    if margin < 0:
        raise ValueError(f"margin must be nonnegative, got {margin}")
    if bounds is None or min(n1, n2) < min_n:
        return "collecting"
    if bounds.low is not None and bounds.low > 0:
        return "better"
    if bounds.low is not None and bounds.low > -margin:
        return "non-inferior"
    if bounds.high is not None and bounds.high < -margin:
        return "worse"
    return "collecting"


def quantile_bounds(
    q: float,
    buckets: Sequence[tuple[float, float]],
    alpha: float = ALPHA,
    tau: float = RATIO_TAU,
    one_sided: bool = False,
) -> Bounds | None:
    """Always-valid interval of the ``q``-quantile of observations kept in a cumulative histogram ((upper bound,
    cumulative count) pairs, +Inf last, as Prometheus keeps them), after Howard & Ramdas (2022): the empirical
    quantiles at ``q -+ u_n``, with ``u_n`` the CS half-width of a Bernoulli(q) mean (variance ``q (1 - q)``):
    each bound is an edge of the bucket its quantile falls in, so the bucket layout limits the resolution (an
    interpolation inside the bucket is no bound: ``blockdrop bench ab-simulation`` shows it rolling back variants
    within a latency limit). The upper end is ``None`` (unbounded) while ``q + u_n`` reaches 1 or its rank falls in
    the +Inf bucket; the lower end is 0 while ``q - u_n`` is not positive. The estimate is the quantile at ``q``,
    interpolated. ``None`` without observations. With ``one_sided`` each end is a one-sided bound at level
    ``alpha``."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    n = ordered[-1][1]
    u = half_width(q * (1 - q) / n, alpha, tau, one_sided)
    estimate = histogram_quantile(q, ordered)
    # where inside its bucket a quantile lies is not known: only the bucket's edges surely bound it
    low = histogram_bucket(q - u, ordered)[0] if q - u > 0 else 0.0
    finite = max(count for bound, count in ordered if not math.isinf(bound))
    high = histogram_bucket(q + u, ordered)[1] if q + u < 1 and (q + u) * n <= finite else None
    return Bounds(0.0 if estimate is None else estimate, low, high)


def ratio_bounds(numerator: Bounds | None, denominator: Bounds | None) -> Bounds | None:
    """Interval of a ratio of two positive quantities from an interval of each (each at alpha / 2 for a joint
    alpha, by the union bound): ``[low1 / high2, high1 / low2]``, an end ``None`` where it is unbounded."""
    if numerator is None or denominator is None or denominator.estimate <= 0:
        return None
    low = None
    if numerator.low is not None and denominator.high is not None and denominator.high > 0:
        low = numerator.low / denominator.high
    elif numerator.low is not None and denominator.high is None:
        low = 0.0
    high = None
    if numerator.high is not None and denominator.low is not None and denominator.low > 0:
        high = numerator.high / denominator.low
    return Bounds(numerator.estimate / denominator.estimate, low, high)
