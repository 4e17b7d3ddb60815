"""The A/B experiment report behind ``GET /v1/experiment`` and the console, computed from Prometheus metric
families alone (``ServiceMetrics.collect()``), so that a deployment with several replicas gets the same report by
passing the families of all of them: samples with equal labels are summed, merged or not.

Every figure but requests/s counts from the service's start (the metrics' own lifetime); requests/s is a rate over
a recent window, from snapshots of the request counters that ``RequestRate`` keeps between reports.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from prometheus_client import Metric

from service import sequential
from service.stats import Z_95, histogram_quantile, two_proportion_z_test, wilson_interval

DEFAULT_BASELINE = "full"
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
ALPHA = 0.05  # a difference is called significant below this two-sided p-value
DEFAULT_MARGIN = 0.02  # accuracy may be this much lower and still count as non-inferior


class Samples:
    """Sample values by sample name, summed over equal label sets (replicas' families add up)."""

    def __init__(self, families: Iterable[Metric]):
        self._values: dict[str, dict[frozenset, float]] = defaultdict(lambda: defaultdict(float))
        for family in families:
            for sample in family.samples:
                self._values[sample.name][frozenset(sample.labels.items())] += sample.value

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every series that has ``labels``."""
        wanted = labels.items()
        return sum(value for key, value in self._values.get(name, {}).items() if wanted <= key)

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The sum of ``name`` per value of ``label``, over the series that have ``labels``."""
        wanted = labels.items()
        grouped: dict[str, float] = defaultdict(float)
        for key, value in self._values.get(name, {}).items():
            if wanted <= key:
                grouped[dict(key).get(label, "")] += value
        return dict(grouped)

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's (upper bound, cumulative count) pairs, +Inf last."""
        return sorted((float(le), count) for le, count in self.by(f"{histogram}_bucket", "le", **labels).items())


def request_totals(families: Iterable[Metric]) -> dict[str, float]:
    """Inference requests per variant since the start, any status (``variant="none"``: failed before routing)."""
    return Samples(families).by("blockdrop_requests_total", "variant")


class Rates(NamedTuple):
    per_second: dict[str, float]
    span_s: float


class RequestRate:
    """Requests per second per variant, from snapshots of the request counters taken each time ``observe`` is
    called (each report): the rate is over the span from the newest snapshot at least ``window_s`` old (or the
    oldest one, early on) to now. None until two snapshots are ``min_span_s`` apart."""

    def __init__(self, window_s: float = 30.0, min_span_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._clock = clock
        self._snapshots: deque[tuple[float, dict[str, float]]] = deque(maxlen=1024)

    def observe(self, totals: Mapping[str, float]) -> Rates | None:
        now = self._clock()
        self._snapshots.append((now, dict(totals)))
        while len(self._snapshots) > 2 and self._snapshots[1][0] <= now - self.window_s:
            self._snapshots.popleft()
        then, before = self._snapshots[0]
        span = now - then
        if span <= 0 or span < self.min_span_s:
            return None
        # a counter that went down was reset (a replica restarted): no rate from it over this span
        per_second = {
            name: (count - before.get(name, 0.0)) / span
            for name, count in totals.items()
            if count >= before.get(name, 0.0)
        }
        return Rates(per_second, span)


def default_baseline(models: list[dict[str, Any]]) -> str:
    """``full`` where a variant has that name, else the first variant that runs every block (e.g. ``full110``
    in the ResNet-110 profile), else ``full`` all the same (and the report compares nothing)."""
    names = [model["name"] for model in models]
    if DEFAULT_BASELINE in names:
        return DEFAULT_BASELINE
    return next((model["name"] for model in models if model.get("mode") == "full"), DEFAULT_BASELINE)


def build_experiment(
    families: Iterable[Metric],
    models: list[dict[str, Any]],
    baseline: str | None = None,
    rates: Rates | None = None,
    margin: float = DEFAULT_MARGIN,
) -> dict[str, Any]:
    """The report: per variant (in ``models``' order; ``models`` as ``DataPlane.models()`` lists them) its traffic,
    latency, FLOPs, blocks, shadow agreement and feedback accuracy, each compared with ``baseline``'s (by default
    ``default_baseline(models)``): always-valid intervals and a decision at non-inferiority ``margin``
    (``service.sequential``), and the fixed-horizon z-test, labelled as such. Without a variant named
    ``baseline`` the report says so and compares nothing."""
    samples = Samples(families)
    by_name = {model["name"]: model for model in models}
    baseline = baseline or default_baseline(models)
    chosen = baseline if baseline in by_name else None
    per_variant = samples.by("blockdrop_requests_total", "variant")
    all_routed = sum(count for name, count in per_variant.items() if name != "none")
    variants = [_variant_report(samples, model, all_routed, rates) for model in models]
    if chosen is not None:
        reference = next(v for v in variants if v["name"] == chosen)
        network_flops = by_name[chosen]["flops"]["full"]
        for report in variants:
            _compare(report, reference, network_flops)
            report["always_valid"] = _always_valid(samples, report, reference, by_name, margin)
    return {
        "baseline": chosen,
        "requested_baseline": baseline,
        "note": None if chosen else f"no variant named {baseline!r}: no comparisons",
        "confidence": 0.95,
        "alpha": ALPHA,
        "margin": margin,
        "rate_span_s": None if rates is None else round(rates.span_s, 3),
        "requests": {
            "routed": all_routed,
            "unrouted": samples.total("blockdrop_requests_total", variant="none"),
            "per_second": None if rates is None else sum(rates.per_second.values()),
        },
        "variants": variants,
    }


def _variant_report(samples: Samples, model: dict[str, Any], all_routed: float, rates: Rates | None) -> dict[str, Any]:
    name = model["name"]
    statuses = samples.by("blockdrop_requests_total", "status", variant=name)
    requests = sum(statuses.values())
    images = samples.total("blockdrop_images_total", variant=name)
    return {
        "name": name,
        "model": model.get("model"),
        "mode": model.get("mode"),
        "blocks": model["blocks"],
        "stages": model.get("stages") or [model["blocks"]],
        "traffic": {
            "configured": model.get("traffic_share"),
            "observed": _ratio(requests, all_routed),
            "requests": requests,
        },
        "requests": {
            "total": requests,
            "errors": sum(count for status, count in statuses.items() if not status.startswith("2")),
            "by_status": dict(sorted(statuses.items())),
            "per_second": None if rates is None else rates.per_second.get(name, 0.0 if requests == 0 else None),
        },
        "latency_s": _latency(samples, name),
        "images": images,
        "flops": _flops(samples, name, images, model["flops"]["full"]),
        "skipped_blocks": _skipped(samples, name, model["blocks"]),
        "block_executions": _executions(samples, name, model["blocks"], images),
        "shadow": _shadow(samples, name),
        "feedback": _feedback(samples, name),
        "always_valid": None,
    }


def _latency(samples: Samples, name: str) -> dict[str, Any]:
    histogram = "blockdrop_request_latency_seconds"
    count = samples.total(f"{histogram}_count", variant=name)
    buckets = samples.buckets(histogram, variant=name)
    quantiles = {key: histogram_quantile(q, buckets) for key, q in QUANTILES.items()}
    return {"count": count, "mean": _ratio(samples.total(f"{histogram}_sum", variant=name), count), **quantiles}


def _flops(samples: Samples, name: str, images: float, network: int) -> dict[str, Any]:
    executed = samples.total("blockdrop_executed_flops_total", variant=name)
    full = samples.total("blockdrop_full_flops_total", variant=name)
    saved = _ratio(executed, full)
    return {
        "mean": _ratio(executed, images),
        "network": network,
        "saved": None if saved is None else 1 - saved,
        "fraction_of_baseline": None,
        "saved_vs_baseline": None,
    }


def _skipped(samples: Samples, name: str, blocks: int) -> dict[str, Any]:
    """Images per bucket of skipped blocks (not cumulative), up to the bucket that holds ``blocks``."""
    histogram = "blockdrop_blocks_skipped"
    count = samples.total(f"{histogram}_count", variant=name)
    shown, below = [], 0.0
    for bound, cumulative in samples.buckets(histogram, variant=name):
        if math.isinf(bound) and cumulative == below:
            break
        shown.append({"le": bound, "count": cumulative - below})
        below = cumulative
        if bound >= blocks:
            break
    return {"mean": _ratio(samples.total(f"{histogram}_sum", variant=name), count), "count": count, "buckets": shown}


def _executions(samples: Samples, name: str, blocks: int, images: float) -> dict[str, Any]:
    counts = samples.by("blockdrop_block_executions_total", "block", variant=name)
    ran = [counts.get(str(block), 0.0) for block in range(blocks)]
    return {"counts": ran, "rates": [_ratio(count, images) for count in ran]}


def _shadow(samples: Samples, name: str) -> list[dict[str, Any]]:
    shadows = samples.by("blockdrop_shadow_comparisons_total", "shadow", variant=name)
    reports = []
    for shadow in sorted(shadows):
        outcomes = samples.by("blockdrop_shadow_comparisons_total", "outcome", variant=name, shadow=shadow)
        agree, disagree = outcomes.get("agree", 0.0), outcomes.get("disagree", 0.0)
        reports.append(
            {
                "shadow": shadow,
                "agree": agree,
                "disagree": disagree,
                "skipped": outcomes.get("skipped", 0.0),
                "agreement": _ratio(agree, agree + disagree),
                "interval": _interval(agree, agree + disagree),
            }
        )
    return reports


def _feedback(samples: Samples, name: str) -> dict[str, Any]:
    outcomes = samples.by("blockdrop_feedback_total", "outcome", variant=name)
    right, wrong = outcomes.get("right", 0.0), outcomes.get("wrong", 0.0)
    n = right + wrong
    return {
        "right": right,
        "wrong": wrong,
        "n": n,
        "accuracy": _ratio(right, n),
        "interval": _interval(right, n),
        "fixed_horizon": None,
    }


def _compare(report: dict[str, Any], reference: dict[str, Any], network_flops: int) -> None:
    """Fill in ``report``'s comparisons with the baseline's report ``reference``."""
    mean = report["flops"]["mean"]
    if mean is not None and network_flops > 0:
        report["flops"]["fraction_of_baseline"] = mean / network_flops
        report["flops"]["saved_vs_baseline"] = 1 - mean / network_flops
    if report["name"] == reference["name"]:
        return
    mine, theirs = report["feedback"], reference["feedback"]
    test = two_proportion_z_test(mine["right"], mine["n"], theirs["right"], theirs["n"])
    if test is not None:
        mine["fixed_horizon"] = {
            "baseline": reference["name"],
            "difference": test.difference,
            "z": test.z,
            "p_value": test.p_value,
            "significant": test.p_value < ALPHA,
        }


def _always_valid(
    samples: Samples, report: dict[str, Any], reference: dict[str, Any], models: dict[str, Any], margin: float
) -> dict[str, Any] | None:
    """Always-valid intervals of the variant against the baseline at 1 - ALPHA (``service.sequential``): the
    accuracy difference and its decision, the p99 latency ratio (each p99 at ALPHA / 2) and the mean FLOPs as a
    fraction of the baseline's network. ``None`` for the baseline itself."""
    if report["name"] == reference["name"]:
        return None
    mine, theirs = report["feedback"], reference["feedback"]
    accuracy = sequential.proportion_difference(mine["right"], mine["n"], theirs["right"], theirs["n"], ALPHA)
    histogram = "blockdrop_request_latency_seconds"
    latency = sequential.ratio_bounds(
        sequential.quantile_bounds(QUANTILES["p99"], samples.buckets(histogram, variant=report["name"]), ALPHA / 2),
        sequential.quantile_bounds(QUANTILES["p99"], samples.buckets(histogram, variant=reference["name"]), ALPHA / 2),
    )
    flops, network = models[report["name"]]["flops"], models[reference["name"]]["flops"]["full"]
    executed = samples.total("blockdrop_executed_flops_total", variant=report["name"])
    mean = sequential.bounded_mean(executed, report["images"], flops["full"] + flops.get("policy", 0), ALPHA)
    return {
        "baseline": reference["name"],
        "accuracy": {
            **_bounds(accuracy),
            "decision": sequential.decide(accuracy, margin, mine["n"], theirs["n"]),
        },
        "latency_p99_ratio": None if latency is None else _bounds(latency),
        "flops_fraction_of_baseline": None
        if mean is None or network <= 0
        else _bounds(sequential.Bounds(mean.estimate / network, mean.low / network, mean.high / network)),
    }


def _bounds(bounds: sequential.Bounds | None) -> dict[str, float | None]:
    if bounds is None:
        return {"estimate": None, "low": None, "high": None}
    return {"estimate": bounds.estimate, "low": bounds.low, "high": bounds.high}


def _interval(successes: float, n: float) -> dict[str, float] | None:
    interval = wilson_interval(successes, n, Z_95)
    return None if interval is None else {"low": interval.low, "high": interval.high}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None
