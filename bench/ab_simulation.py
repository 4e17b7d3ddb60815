"""Simulated A/B tests under continuous monitoring: the false-positive rate of the fixed-horizon z-test and of the
always-valid tests when every feedback is looked at, their power, and the rollout's guardrail on a bad variant
and a ramp of a non-inferior one. Writes ``ab_simulation.json`` and ``ab_simulation.md``:

    blockdrop bench ab-simulation

Vectorised with numpy over experiments (in chunks) and feedback; the formulas are ``service.sequential``'s
(``half_width`` below is its vector form, checked equal in tests/test_bench.py). The board's questions (better or
worse?) use two-sided intervals, a rollout's guardrail one-sided bounds, as the service does.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.common import RESULTS, positive_int, write_results
from service import sequential
from service.metrics import LATENCY_BUCKETS, REQUEST_LATENCY_BUCKETS, latency_buckets
from service.rollouts import ArmCounts, Evidence, RolloutPlan, judge
from service.sequential import ACCURACY_TAU, ALPHA, MIN_FEEDBACK
from service.stats import Z_95, histogram_quantile

CHUNK_CELLS = 4_000_000  # experiments x feedback simulated at once (about 32 MB per float array)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiments", type=positive_int, default=2000, help="simulated experiments per scenario")
    parser.add_argument("--aa-feedback", type=positive_int, default=10_000, help="feedback per A/A experiment")
    parser.add_argument(
        "--power-feedback", type=positive_int, default=20_000, help="feedback per power experiment (half per arm)"
    )
    parser.add_argument("--baseline-accuracy", type=float, default=0.9, help="the simulated baseline's accuracy")
    parser.add_argument("--seed", type=int, default=0, help="seeds every simulated experiment")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON and Markdown results go")


def execute(args: argparse.Namespace) -> int:
    if not 0 < args.baseline_accuracy < 1:
        raise ValueError(f"--baseline-accuracy must be in (0, 1), got {args.baseline_accuracy}")
    result = simulate(args.experiments, args.aa_feedback, args.power_feedback, args.baseline_accuracy, args.seed)
    write_results(args.out, "ab_simulation", result, markdown(result))
    return 0


def half_width(
    variance: np.ndarray, alpha: float = ALPHA, tau: float = ACCURACY_TAU, one_sided: bool = False
) -> np.ndarray:
    """``service.sequential.half_width`` on arrays (0 where the variance is 0). The one-sided width (a bisection
    there) is interpolated here from the service's own on a fine grid of variances: ``width / sqrt(variance)``
    depends smoothly on ``log(variance)`` alone."""
    v = np.maximum(variance, 1e-300)
    if one_sided:
        log_grid, scaled = _one_sided_grid(alpha, tau)
        return np.sqrt(v) * np.interp(np.log(v), log_grid, scaled)
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log1p(t2 / v)))


@functools.cache
def _one_sided_grid(alpha: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.logspace(-14, 2, 6000)
    scaled = [sequential.half_width(v, alpha, tau, one_sided=True) / math.sqrt(v) for v in grid]
    return np.log(grid), np.array(scaled)


def smoothed_variance(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    p = (x + 1) / (n + 2)
    return p * (1 - p)


@dataclass
class Looks:
    """Running counts after each feedback: (experiments, feedback) arrays of successes and trials per arm."""

    x_variant: np.ndarray
    n_variant: np.ndarray
    x_baseline: np.ndarray
    n_baseline: np.ndarray

    def difference_bounds(self, alpha: float = ALPHA, one_sided: bool = False) -> tuple[np.ndarray, np.ndarray]:
        nv, nb = np.maximum(self.n_variant, 1), np.maximum(self.n_baseline, 1)
        d = self.x_variant / nv - self.x_baseline / nb
        variance = smoothed_variance(self.x_variant, nv) / nv + smoothed_variance(self.x_baseline, nb) / nb
        h = half_width(variance, alpha, one_sided=one_sided)
        return d - h, d + h

    def z_rejects(self) -> np.ndarray:
        """Today's board: the pooled two-proportion z-test's p < 0.05 (``service.stats.two_proportion_z_test``)."""
        nv, nb = np.maximum(self.n_variant, 1), np.maximum(self.n_baseline, 1)
        pooled = (self.x_variant + self.x_baseline) / (nv + nb)
        variance = pooled * (1 - pooled) * (1 / nv + 1 / nb)
        z = np.abs(self.x_variant / nv - self.x_baseline / nb) / np.sqrt(np.where(variance > 0, variance, np.inf))
        return z > Z_95

    def enough(self) -> np.ndarray:
        return np.minimum(self.n_variant, self.n_baseline) >= MIN_FEEDBACK


def draw_looks(
    rng: np.random.Generator, experiments: int, feedback: int, share: float, p_v: float, p_b: float
) -> Looks:
    """Every feedback goes to the variant with probability ``share``; right with its arm's accuracy."""
    to_variant = rng.random((experiments, feedback)) < share
    right = rng.random((experiments, feedback)) < np.where(to_variant, p_v, p_b)
    n_v = np.cumsum(to_variant, axis=1, dtype=np.float64)
    x_v = np.cumsum(right & to_variant, axis=1, dtype=np.float64)
    steps = np.arange(1, feedback + 1, dtype=np.float64)
    return Looks(x_v, n_v, np.cumsum(right, axis=1, dtype=np.float64) - x_v, steps - n_v)


def first_look(flags: np.ndarray) -> np.ndarray:
    """Index of the first True per row (feedback count - 1), -1 where never."""
    hit = flags.any(axis=1)
    return np.where(hit, flags.argmax(axis=1), -1)


def chunks(experiments: int, feedback: int) -> list[int]:
    size = max(1, CHUNK_CELLS // feedback)
    return [min(size, experiments - start) for start in range(0, experiments, size)]


def rate(hits: int, total: int) -> dict[str, float]:
    """A proportion with its Monte-Carlo standard error, sqrt(p (1 - p) / n)."""
    p = hits / total
    return {"rate": p, "mc_error": math.sqrt(p * (1 - p) / total), "count": hits, "of": total}


def aa(rng: np.random.Generator, experiments: int, feedback: int, p: float, margin: float) -> dict:
    z_hits = seq_hits = rollback_hits = 0
    for size in chunks(experiments, feedback):
        looks = draw_looks(rng, size, feedback, 0.5, p, p)
        low, high = looks.difference_bounds()
        enough = looks.enough()
        z_hits += int((looks.z_rejects() & enough).any(axis=1).sum())
        seq_hits += int((((low > 0) | (high < 0)) & enough).any(axis=1).sum())
        _, upper = looks.difference_bounds(one_sided=True)
        rollback_hits += int(((upper < -margin) & enough).any(axis=1).sum())
    return {
        "z_test_peeking": rate(z_hits, experiments),
        "always_valid": rate(seq_hits, experiments),
        "rollout_accuracy_guardrail": rate(rollback_hits, experiments),
    }


def per_variant_feedback(
    rng: np.random.Generator, experiments: int, feedback: int, share: float, p_v: float, p_b: float
) -> Looks:
    """Looks after each feedback on the variant (``feedback`` of them), the baseline getting its share of the
    stream in between: a negative-binomial count of baseline feedbacks before each variant feedback, right with
    its accuracy (the same stream as ``draw_looks``, seen at the variant's feedbacks)."""
    x_v = np.cumsum(rng.random((experiments, feedback)) < p_v, axis=1, dtype=np.float64)
    n_v = np.broadcast_to(np.arange(1, feedback + 1, dtype=np.float64), x_v.shape)
    between = rng.negative_binomial(1, share, (experiments, feedback)) if share < 1 else np.zeros_like(x_v)
    n_b = np.cumsum(between, axis=1, dtype=np.float64)
    x_b = np.cumsum(rng.binomial(between, p_b), axis=1, dtype=np.float64)
    return Looks(x_v, n_v, x_b, n_b)


def detection(
    rng: np.random.Generator,
    experiments: int,
    feedback: int,
    share: float,
    p_v: float,
    p_b: float,
    margin: float,
    one_sided: bool = False,
) -> dict:
    """How often, and after how much feedback on the variant, the CS (``one_sided``: the rollout's upper bound) says
    it is worse than the baseline by more than ``margin`` within ``feedback`` feedbacks on the variant (looked at
    after each); with the fixed-horizon z-test's power at the last look for comparison."""
    on_variant, z_final, detected = [], 0, 0
    for size in chunks(experiments, feedback):
        looks = per_variant_feedback(rng, size, feedback, share, p_v, p_b)
        _, high = looks.difference_bounds(one_sided=one_sided)
        first = first_look((high < -margin) & looks.enough())
        found = first >= 0
        detected += int(found.sum())
        on_variant += (first[found] + 1).tolist()
        last = Looks(*(a[:, -1] for a in (looks.x_variant, looks.n_variant, looks.x_baseline, looks.n_baseline)))
        lower = last.x_variant / last.n_variant < last.x_baseline / np.maximum(last.n_baseline, 1)
        z_final += int((last.z_rejects() & lower).sum())
    needed = np.array(on_variant) if on_variant else np.array([math.nan])
    return {
        "share": share,
        "variant_accuracy": p_v,
        "baseline_accuracy": p_b,
        "margin": margin,
        "feedback_on_variant_max": feedback,
        "power": rate(detected, experiments),
        "fixed_horizon_z_power": rate(z_final, experiments),
        "feedback_on_variant": {
            "median": float(np.median(needed)),
            "p90": float(np.percentile(needed, 90)),
            "max": float(np.max(needed)),
        },
        "within_400": rate(int((needed <= 400).sum()), experiments),
    }


def ramp(rng: np.random.Generator, experiments: int, p: float, plan: RolloutPlan, tick: int = 10) -> dict:
    """The rollout controller's accuracy rule on a variant as accurate as its baseline: feedback arrives at the
    current step's share, the rule is checked every ``tick`` feedbacks on the variant (the controller's interval),
    a step advances once it has ``plan.min_feedback`` on the variant and non-inferiority holds, the variant rolls
    back if the CS says worse by more than the margin. Reports how many reach the last step and the feedback it
    took."""
    alpha = 1 - plan.confidence
    shares = np.array(plan.steps) / 100
    step = np.zeros(experiments, dtype=np.int64)
    state = np.zeros(experiments, dtype=np.int64)  # 0 running, 1 completed, 2 rolled back
    x_v, n_v, x_b, n_b = (np.zeros(experiments) for _ in range(4))
    at_step_start = np.zeros(experiments)
    for _ in range(1_000_000):
        running = state == 0
        if not running.any():
            break
        between = rng.negative_binomial(tick, shares[step]) * running
        x_v += rng.binomial(tick, p, experiments) * running
        n_v += tick * running
        x_b += rng.binomial(between, p)
        n_b += between
        low, high = Looks(x_v, n_v, x_b, n_b).difference_bounds(alpha, one_sided=True)
        enough = np.minimum(n_v, n_b) >= MIN_FEEDBACK
        worse = running & enough & (high < -plan.accuracy_margin)
        state[worse] = 2
        advance = running & ~worse & enough & (low > -plan.accuracy_margin)
        advance &= n_v - at_step_start >= plan.min_feedback
        at_step_start[advance] = n_v[advance]
        step[advance] += 1
        state[running & (step == len(shares) - 1)] = 1
    completed = state == 1
    return {
        "accuracy": p,
        "steps": plan.steps,
        "min_feedback": plan.min_feedback,
        "margin": plan.accuracy_margin,
        "confidence": plan.confidence,
        "tick_feedback_on_variant": tick,
        "reached_100": rate(int(completed.sum()), experiments),
        "rolled_back": rate(int((state == 2).sum()), experiments),
        "feedback_to_100": {
            "median_total": float(np.median((n_v + n_b)[completed])) if completed.any() else None,
            "median_on_variant": float(np.median(n_v[completed])) if completed.any() else None,
        },
    }


LATENCY_FACTORS = (1.0, 1.3, 1.46, 1.5, 2.5)  # the variant's latencies: the baseline's times this
LATENCY_LOOKS, LATENCY_EVERY = 20_000, 250  # requests on each arm, and a look every this many
# the request-latency buckets before service.metrics.REQUEST_LATENCY_BUCKETS went to 48 a decade: 24 a decade from 1
# to 100 ms, 12 outside; the guardrail's rule the same, only twice as coarse
BUCKETS_24_A_DECADE = latency_buckets(24)


def latency_guardrail(rng: np.random.Generator, experiments: int, plan: RolloutPlan) -> dict:
    """The latency guardrail (p99 ratio, variant over baseline, at most ``plan.max_latency_ratio``) as the service
    judges it (``service.rollouts.judge``): baseline latencies log-normal (median 6 ms, sigma 0.3), the variant's the
    same times a factor, both arms looked at every 250 requests. How often it was ever called violated, and how often
    it held at the end; a factor at or under the limit may be violated in at most 1 - confidence of experiments.
    Beside it, how often it held at the end with buckets half as fine (24 a decade), and the rule before that:
    the service's old, coarser buckets with the bounds interpolated inside them (PromQL-style), which is no
    bound."""
    alpha, q, limit = 1 - plan.confidence, plan.latency_quantile, float(plan.max_latency_ratio or 1.5)
    now_edges, before_edges = np.array([*REQUEST_LATENCY_BUCKETS, math.inf]), np.array([*LATENCY_BUCKETS, math.inf])
    coarser_edges = np.array([*BUCKETS_24_A_DECADE, math.inf])
    rows = {}
    for factor in LATENCY_FACTORS:
        violated = held = held_coarser = violated_before = 0
        for _ in range(experiments):
            arms = [rng.lognormal(math.log(0.006), 0.3, LATENCY_LOOKS) * f for f in (factor, 1.0)]
            now = [np.searchsorted(now_edges, latencies) for latencies in arms]
            before = [np.searchsorted(before_edges, latencies) for latencies in arms]
            state, ever, ever_before = "unknown", False, False
            for n in range(LATENCY_EVERY, LATENCY_LOOKS + 1, LATENCY_EVERY):
                state = _latency_state(plan, [_histogram(now_edges, where[:n]) for where in now])
                ever |= state == "violated"
                old = [_histogram(before_edges, where[:n]) for where in before]
                old_ratio = sequential.ratio_bounds(*(_interpolated_bounds(q, h, alpha / 2) for h in old))
                ever_before |= old_ratio is not None and old_ratio.low is not None and old_ratio.low > limit
            coarser = [_histogram(coarser_edges, np.searchsorted(coarser_edges, latencies)) for latencies in arms]
            violated, held, violated_before = violated + ever, held + (state == "holds"), violated_before + ever_before
            held_coarser += _latency_state(plan, coarser) == "holds"
        rows[str(factor)] = {
            "factor": factor,
            "violated": rate(violated, experiments),
            "holds_at_the_end": rate(held, experiments),
            "holds_at_the_end_24_a_decade": rate(held_coarser, experiments),
            "violated_before": rate(violated_before, experiments),
        }
    return {"limit": limit, "quantile": q, "confidence": plan.confidence, "requests": LATENCY_LOOKS, "rows": rows}


def _histogram(edges: np.ndarray, where: np.ndarray) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of observations already placed in buckets (``where``)."""
    return list(zip(edges.tolist(), np.cumsum(np.bincount(where, minlength=len(edges))).tolist()))


def _latency_state(plan: RolloutPlan, histograms: list[list[tuple[float, float]]]) -> str:
    """The service's latency check on these two histograms (variant's, baseline's)."""
    variant, baseline = (ArmCounts(latency_buckets=tuple(count for _, count in h)) for h in histograms)
    evidence = Evidence(variant, baseline, tuple(edge for edge, _ in histograms[0]), 1.0, 1.0)
    return next(check.state for check in judge(plan, evidence) if check.name == "latency")


def _interpolated_bounds(q: float, buckets: list[tuple[float, float]], alpha: float) -> sequential.Bounds | None:
    """``sequential.quantile_bounds`` as it was: its ends interpolated inside the buckets (and two-sided)."""
    n = buckets[-1][1]
    if n <= 0:
        return None
    u = sequential.half_width(q * (1 - q) / n, alpha, sequential.RATIO_TAU)
    finite = buckets[-2][1]
    low = histogram_quantile(q - u, buckets) if q - u > 0 else 0.0
    high = histogram_quantile(q + u, buckets) if q + u < 1 and (q + u) * n <= finite else None
    return sequential.Bounds(histogram_quantile(q, buckets) or 0.0, low, high)


def error_guardrail(rng: np.random.Generator, experiments: int, plan: RolloutPlan, requests: int = 20_000) -> dict:
    """The error-rate guardrail with the variant's true 5xx rate exactly at ``plan.max_error_rate``, looked at after
    every request: how often it was ever called violated (at most 1 - confidence)."""
    limit, alpha = float(plan.max_error_rate or 0.01), 1 - plan.confidence
    wrong = 0
    for size in chunks(experiments, requests):
        errors = np.cumsum(rng.random((size, requests)) < limit, axis=1, dtype=np.float64)
        n = np.arange(1, requests + 1, dtype=np.float64)
        low = errors / n - half_width(smoothed_variance(errors, n) / n, alpha, one_sided=True)
        wrong += int((low > limit).any(axis=1).sum())
    return {"limit": limit, "requests": requests, "violated": rate(wrong, experiments)}


def simulate(experiments: int, aa_feedback: int, power_feedback: int, p: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    plan = RolloutPlan()
    started = time.perf_counter()
    aa_rates = aa(rng, experiments, aa_feedback, p, plan.accuracy_margin)
    power = {
        f"{points}_points": detection(rng, experiments, power_feedback // 2, 0.5, p - points / 100, p, 0.0)
        for points in (2, 5)
    }
    bad = detection(rng, experiments, 1000, 0.05, p - 0.10, p, plan.accuracy_margin, one_sided=True)
    # the same with the two-sided interval the rollouts used before, for comparison in one run
    bad_two_sided = detection(rng, experiments, 1000, 0.05, p - 0.10, p, plan.accuracy_margin)
    return {
        "experiments": experiments,
        "seed": seed,
        "alpha": ALPHA,
        "tau": ACCURACY_TAU,
        "min_feedback_per_arm": MIN_FEEDBACK,
        "baseline_accuracy": p,
        "aa_feedback": aa_feedback,
        "aa_false_positive_rate": {name: figures["rate"] for name, figures in aa_rates.items()},
        "aa": aa_rates,
        "power": power,
        "bad_variant_at_5_percent": bad,
        "bad_variant_at_5_percent_two_sided": bad_two_sided,
        "non_inferior_ramp": ramp(rng, experiments, p, plan),
        "error_guardrail_at_its_limit": error_guardrail(rng, experiments, plan),
        "latency_guardrail": latency_guardrail(rng, max(1, experiments // 10), plan),  # slow: every look in Python
        "seconds": round(time.perf_counter() - started, 2),
    }


def markdown(r: dict) -> str:
    def pct(figure: dict) -> str:
        return f"{figure['rate'] * 100:.1f} % ± {figure['mc_error'] * 100:.1f}"

    aa_rows = {
        "z_test_peeking": "today's z-test (p < 0.05), fixed-horizon, looked at after every feedback",
        "always_valid": "always-valid CS excludes 0 (board: better or worse)",
        "rollout_accuracy_guardrail": "always-valid one-sided upper bound below −margin (a rollout's rollback)",
    }
    lines = [
        "# A/B statistics under continuous monitoring (simulation)",
        "",
        f"{r['experiments']} simulated experiments per scenario, seed {r['seed']}, baseline accuracy "
        f"{r['baseline_accuracy']:.2f}, α = {r['alpha']}, mixture τ = {r['tau']}, no decision before "
        f"{r['min_feedback_per_arm']} feedback per arm. ± is the Monte-Carlo standard error.",
        "",
        f"## A/A: false-positive rate, looked at after every one of {r['aa_feedback']} feedbacks (50/50 split)",
        "",
        "| test | false-positive rate |",
        "|---|---|",
        *(f"| {label} | {pct(r['aa'][name])} |" for name, label in aa_rows.items()),
        "",
        "## Power: a variant less accurate than the baseline (50/50 split, always-valid CS below 0)",
        "",
        "| loss | feedback on each arm | power | fixed-horizon z-test at the end | feedback on the variant when "
        "detected: median / p90 |",
        "|---|---|---|---|---|",
    ]
    for name, p in r["power"].items():
        needed = p["feedback_on_variant"]
        lines.append(
            f"| {name.split('_')[0]} points | {p['feedback_on_variant_max']} | {pct(p['power'])} "
            f"| {pct(p['fixed_horizon_z_power'])} "
            f"| {needed['median']:.0f} / {needed['p90']:.0f} |"
        )
    bad, two_sided, ramp_ = (
        r["bad_variant_at_5_percent"],
        r["bad_variant_at_5_percent_two_sided"],
        r["non_inferior_ramp"],
    )
    needed, needed_two = bad["feedback_on_variant"], two_sided["feedback_on_variant"]
    lines += [
        "",
        "## Rollouts",
        "",
        f"A variant 10 points less accurate ({bad['variant_accuracy']:.2f}) at a 5 % share, rolled back when the "
        f"one-sided upper bound is below −{bad['margin']} (looked at after every feedback on it): "
        f"{pct(bad['within_400'])} rolled back within 400 feedbacks on it, {pct(bad['power'])} within "
        f"{bad['feedback_on_variant_max']}; feedback on it until then: median {needed['median']:.0f}, "
        f"p90 {needed['p90']:.0f}, max {needed['max']:.0f}. With the two-sided interval instead (the same scenario, "
        f"other draws): {pct(two_sided['within_400'])} within 400, median {needed_two['median']:.0f}, "
        f"p90 {needed_two['p90']:.0f}.",
        "",
        f"A variant as accurate as its baseline (one-sided bounds), plan steps {ramp_['steps']} %, "
        f"{ramp_['min_feedback']} feedbacks "
        f"on it per step, margin {ramp_['margin']}, confidence {ramp_['confidence']}, checked every "
        f"{ramp_['tick_feedback_on_variant']} feedbacks on the variant: "
        f"{pct(ramp_['reached_100'])} reached 100 %, {pct(ramp_['rolled_back'])} rolled back; median feedback "
        f"to 100 %: {ramp_['feedback_to_100']['median_total']:.0f} in all, "
        f"{ramp_['feedback_to_100']['median_on_variant']:.0f} on the variant.",
        "",
        *guardrail_lines(r["error_guardrail_at_its_limit"], r["latency_guardrail"], pct),
        f"Simulated in {r['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def guardrail_lines(errors: dict, latency: dict, pct: Callable[[dict], str]) -> list[str]:
    rows = latency["rows"].values()
    experiments = next(iter(rows))["violated"]["of"]
    return [
        "## The other guardrails",
        "",
        f"Error rate exactly at its limit ({errors['limit']}), looked at after every one of {errors['requests']} "
        f"requests: called violated in {pct(errors['violated'])} of experiments.",
        "",
        f"Latency: p{latency['quantile'] * 100:g} of the variant over the baseline's, limit {latency['limit']}x, "
        f"{experiments} experiments of {latency['requests']} requests on each arm (baseline log-normal, median 6 ms, "
        "σ 0.3; the variant's the same times a factor), looked at every 250 requests; bounds at bucket edges of "
        "`REQUEST_LATENCY_BUCKETS` (48 a decade from 1 to 100 ms); beside it, held at the end with buckets half as "
        "fine (24 a decade, the service's before), and the rule before that (the old, coarser buckets, bounds "
        "interpolated inside them):",
        "",
        "| variant's latency | violated | held at the end | held, 24 a decade | violated, the rule before |",
        "|---|---|---|---|---|",
        *(f"| {row['factor']:g}x | {pct(row['violated'])} | {pct(row['holds_at_the_end'])} "
          f"| {pct(row['holds_at_the_end_24_a_decade'])} | {pct(row['violated_before'])} |" for row in rows),
        "",
    ]  # fmt: skip
