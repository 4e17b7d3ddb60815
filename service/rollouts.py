"""Rollouts: ramp a variant's traffic share through a plan's steps while its guardrails hold against a baseline, and
roll it back at once when one is violated. Pure decision logic on counts (no clock, no I/O, no event loop), so it
can be tested on scripted evidence; ``service/rollout_driver.py`` feeds it the service's metrics on a timer and
``service/rollout_store.py`` keeps its state.

A guardrail is judged with always-valid bounds (``service.sequential``), each guardrail on its own: it *holds* when
the whole interval is on the allowed side of its limit, is *violated* when the whole interval is on the other side,
and is *unknown* otherwise. Each end is a one-sided bound at the plan's confidence, since each decision asks one
side: a wrong rollback (a guardrail that in truth holds, called violated) and a wrong advance each have a chance of
at most 1 - confidence, however often the controller looks. A step advances once the variant has the
plan's feedback in that step and every guardrail holds; a violated guardrail rolls back, whatever the step (also
while paused). Evidence counts from the rollout's start, over all its steps: confidence sequences stay valid
however often they are checked, so the controller may check after every tick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service import sequential

Status = Literal["running", "paused", "completed", "rolled_back", "aborted"]
Action = Literal["start", "advance", "complete", "rollback", "hold", "pause", "resume", "abort"]
CheckState = Literal["holds", "violated", "unknown"]
ACTIVE: tuple[Status, ...] = ("running", "paused")


class RolloutPlan(BaseModel):
    """What ``PUT /v1/rollouts/{variant}`` takes: the steps, the feedback per step and the guardrails; a guardrail
    set to null is not checked."""

    model_config = ConfigDict(extra="forbid")

    baseline: str | None = Field(
        default=None, max_length=64, description="the variant to compare with (default: the experiment's baseline)"
    )
    steps: list[float] = Field(
        default=[1, 5, 25, 50, 100],
        min_length=2,
        max_length=20,
        description="traffic shares in percent of unpinned traffic, increasing; reaching the last completes it",
    )
    min_feedback: int = Field(default=200, ge=1, description="feedback on the variant needed in each step")
    confidence: float = Field(
        default=0.95, ge=0.5, lt=1, description="of each end of each guardrail's always-valid bounds (one-sided)"
    )
    accuracy_margin: float = Field(
        default=0.02, ge=0, le=1, description="non-inferiority margin: accuracy may be at most this much lower"
    )
    max_latency_ratio: float | None = Field(
        default=1.5, gt=0, description="highest allowed latency-quantile ratio, variant / baseline"
    )
    latency_quantile: float = Field(default=0.99, gt=0, lt=1, description="the quantile max_latency_ratio is on")
    max_error_rate: float | None = Field(
        default=0.01, ge=0, le=1, description="highest allowed share of the variant's requests answered 5xx"
    )
    min_flops_saving: float | None = Field(
        default=None, gt=-1, le=1, description="lowest allowed FLOPs saving against the baseline's full network"
    )

    @field_validator("steps")
    @classmethod
    def _increasing_percentages(cls, steps: list[float]) -> list[float]:
        if any(not 0 < share <= 100 for share in steps):
            raise ValueError(f"steps are percentages in (0, 100], got {steps}")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError(f"steps must increase, got {steps}")
        return steps


@dataclass(frozen=True)
class ArmCounts:
    """One variant's counters since the rollout started (or, as read from metrics, since its process started)."""

    right: float = 0.0
    wrong: float = 0.0
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    latency_buckets: tuple[float, ...] = ()  # cumulative, in ``latency_bounds`` order (+Inf last)
    flops: float = 0.0  # executed, policy included
    images: float = 0.0

    @property
    def feedback(self) -> float:
        return self.right + self.wrong

    def minus(self, earlier: ArmCounts) -> ArmCounts:
        """What was added since ``earlier``; everything since the start if a counter went down (a restart)."""
        if not earlier.latency_buckets:
            earlier = ArmCounts(latency_buckets=tuple(0.0 for _ in self.latency_buckets))
        pairs = [(getattr(self, f.name), getattr(earlier, f.name)) for f in fields(self) if f.name != "latency_buckets"]
        buckets = list(zip(self.latency_buckets, earlier.latency_buckets))
        if any(now < then for now, then in pairs + buckets) or len(buckets) != len(self.latency_buckets):
            return self
        return ArmCounts(
            *(now - then for now, then in pairs[:4]),
            tuple(now - then for now, then in buckets),
            *(now - then for now, then in pairs[4:]),
        )

    def plus(self, other: ArmCounts) -> ArmCounts:
        mine = self.latency_buckets or tuple(0.0 for _ in other.latency_buckets)
        theirs = other.latency_buckets or tuple(0.0 for _ in mine)
        if len(mine) != len(theirs):  # stored under another bucket layout (an upgrade mid-rollout): start afresh
            mine = tuple(0.0 for _ in theirs)
        return ArmCounts(
            self.right + other.right,
            self.wrong + other.wrong,
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(a + b for a, b in zip(mine, theirs)),
            self.flops + other.flops,
            self.images + other.images,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"latency_buckets": list(self.latency_buckets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmCounts:
        return cls(**(data | {"latency_buckets": tuple(data.get("latency_buckets", ()))}))


@dataclass(frozen=True)
class Evidence:
    """Both arms' counts since the rollout started, and what the FLOPs guardrail needs to know of the networks."""

    variant: ArmCounts
    baseline: ArmCounts
    latency_bounds: tuple[float, ...]  # the histogram's upper bounds, +Inf last
    variant_max_flops: float  # per image: the variant's full network and its policy
    baseline_network_flops: float


@dataclass
class Check:
    name: str
    state: CheckState
    limit: float
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    note: str | None = None


@dataclass
class Decision:
    action: Action
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def judge(plan: RolloutPlan, evidence: Evidence) -> list[Check]:
    """Every guardrail of ``plan`` on ``evidence``."""
    alpha = 1 - plan.confidence
    v, b = evidence.variant, evidence.baseline
    checks = [_accuracy(plan, v, b, alpha)]
    if plan.max_latency_ratio is not None:
        checks.append(_latency(plan, evidence, alpha))
    if plan.max_error_rate is not None:
        checks.append(_errors(plan.max_error_rate, v, alpha))
    if plan.min_flops_saving is not None:
        checks.append(_flops(plan.min_flops_saving, evidence, alpha))
    return checks


def decide(plan: RolloutPlan, status: Status, step: int, step_feedback: float, evidence: Evidence) -> Decision:
    """What the controller does now: ``rollback`` if a guardrail is violated (running or paused); when running,
    ``advance`` (``complete`` onto the last step) once the step has ``plan.min_feedback`` feedback on the variant
    and every guardrail holds; else ``hold``."""
    checks = judge(plan, evidence)
    violated = [check.name for check in checks if check.state == "violated"]
    if status not in ACTIVE:
        return Decision("hold", ["the rollout is over"], checks)
    if violated:
        return Decision("rollback", [f"{name} violated" for name in violated], checks)
    if status == "paused":
        return Decision("hold", ["paused"], checks)
    if step_feedback < plan.min_feedback:
        return Decision("hold", [f"{step_feedback:g} of {plan.min_feedback} feedback in this step"], checks)
    unknown = [check.name for check in checks if check.state != "holds"]
    if unknown:
        return Decision("hold", [f"{name} not yet shown" for name in unknown], checks)
    last = step + 1 == len(plan.steps) - 1
    return Decision("complete" if last else "advance", ["every guardrail holds"], checks)


def target_weights(start: dict[str, float], variant: str, baseline: str, share: float | None) -> dict[str, float]:
    """Router weights that give ``variant`` ``share`` (a fraction) of unpinned traffic, the others keeping their
    proportions from ``start`` (the weights when the rollout began); ``share=None`` (rolled back) gives the variant
    0 and the others their ``start`` weights. The baseline always gets traffic back: if it had weight 0
    at the start it gets the highest of the others' weights (or 1)."""
    others = {name: weight for name, weight in start.items() if name != variant}
    if others.get(baseline, 0) <= 0:
        others[baseline] = max([w for w in others.values() if w > 0], default=1.0)
    if share is None:
        return others | {variant: 0.0}
    if share >= 1:
        return {name: 0.0 for name in others} | {variant: 1.0}
    return others | {variant: share / (1 - share) * sum(others.values())}


def weights_for(rollout: dict[str, Any]) -> dict[str, float]:
    """The router weights ``rollout`` asks for now: its step's share while it runs, is paused or has completed; the
    variant's weight 0 once rolled back (a guardrail failed); once aborted (an operator's call, no verdict on the
    variant) the weights it started from, the variant's own included."""
    start, status = rollout["weights_at_start"], rollout["status"]
    if status == "aborted":
        return dict(start)
    share = rollout["share"] / 100 if status in (*ACTIVE, "completed") else None
    return target_weights(start, rollout["variant"], rollout["baseline"], share)


def weights_to_restore(
    settings_weights: dict[str, float], rollouts: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, Any]] | None:
    """What a restart sets, and the rollout it comes from: the weights left by the rollout that ended last (a
    rolled-back variant stays out, a completed one keeps its share), if the settings' weights are still those it
    began under; None if none ended or the settings changed since (then they win)."""
    ended = [r for r in rollouts if r["status"] not in ACTIVE]
    if not ended:
        return None
    last = max(ended, key=lambda r: r["updated_at"])
    began_under = last.get("settings_weights")
    if began_under is None or began_under.keys() != settings_weights.keys():
        return None
    if any(abs(began_under[name] - weight) > 1e-9 for name, weight in settings_weights.items()):
        return None
    return weights_for(last), last


def _state(low: float | None, high: float | None, limit: float, higher_is_better: bool) -> CheckState:
    if higher_is_better:
        if low is not None and low > limit:
            return "holds"
        if high is not None and high < limit:
            return "violated"
    else:
        if high is not None and high <= limit:
            return "holds"
        if low is not None and low > limit:
            return "violated"
    return "unknown"


def _accuracy(plan: RolloutPlan, v: ArmCounts, b: ArmCounts, alpha: float) -> Check:
    bounds = sequential.proportion_difference(v.right, v.feedback, b.right, b.feedback, alpha, one_sided=True)
    limit = -plan.accuracy_margin
    if bounds is None or min(v.feedback, b.feedback) < sequential.MIN_FEEDBACK:
        note = f"needs {sequential.MIN_FEEDBACK} feedback on each arm"
        return Check("accuracy", "unknown", limit, None if bounds is None else bounds.estimate, note=note)
    state = _state(bounds.low, bounds.high, limit, higher_is_better=True)
    return Check("accuracy", state, limit, bounds.estimate, bounds.low, bounds.high, "variant - baseline")


def _latency(plan: RolloutPlan, evidence: Evidence, alpha: float) -> Check:
    q, limit = plan.latency_quantile, float(plan.max_latency_ratio or math.inf)
    mine = sequential.quantile_bounds(q, _buckets(evidence, evidence.variant), alpha / 2, one_sided=True)
    theirs = sequential.quantile_bounds(q, _buckets(evidence, evidence.baseline), alpha / 2, one_sided=True)
    ratio = sequential.ratio_bounds(mine, theirs)
    note = f"p{q * 100:g} variant / baseline"
    if ratio is None:
        return Check("latency", "unknown", limit, note=note)
    return Check(
        "latency", _state(ratio.low, ratio.high, limit, False), limit, ratio.estimate, ratio.low, ratio.high, note
    )


def _errors(limit: float, v: ArmCounts, alpha: float) -> Check:
    bounds = sequential.proportion(v.errors, v.requests, alpha, one_sided=True)
    if bounds is None:
        return Check("errors", "unknown", limit, note="5xx / requests")
    return Check("errors", _state(bounds.low, bounds.high, limit, False), limit, *bounds, "5xx / requests")


def _flops(limit: float, evidence: Evidence, alpha: float) -> Check:
    v, network = evidence.variant, evidence.baseline_network_flops
    bounds = sequential.bounded_mean(v.flops, v.images, max(evidence.variant_max_flops, 1.0), alpha, one_sided=True)
    if bounds is None or network <= 0:
        return Check("flops", "unknown", limit, note="1 - variant FLOPs / baseline network")
    saving = sequential.Bounds(1 - bounds.estimate / network, 1 - bounds.high / network, 1 - bounds.low / network)
    return Check("flops", _state(saving.low, saving.high, limit, True), limit, *saving, "1 - FLOPs / baseline network")


def _buckets(evidence: Evidence, arm: ArmCounts) -> list[tuple[float, float]]:
    return list(zip(evidence.latency_bounds, arm.latency_buckets))


# the rollout's record, as the store keeps it (JSON) ------------------------------------------------------------
def new_rollout(
    variant: str,
    baseline: str,
    plan: RolloutPlan,
    weights: dict[str, float],
    now: float,
    settings_weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A rollout that starts now at the plan's first step, remembering the weights to return to (``weights``, the
    router's now) and the settings' weights it begins under (a restart keeps its outcome while they stand)."""
    rollout = {
        "variant": variant,
        "baseline": baseline,
        "plan": plan.model_dump(),
        "status": "running",
        "step": 0,
        "share": plan.steps[0],
        "started_at": now,
        "updated_at": now,
        "version": 0,
        "weights_at_start": dict(weights),
        "settings_weights": dict(settings_weights or weights),
        "step_started_feedback": 0.0,
        "evidence": {"variant": ArmCounts().as_dict(), "baseline": ArmCounts().as_dict()},
        "seen": {},
        "checks": [],
        "history": [],
    }
    steps = ", ".join(f"{share:g}" for share in plan.steps)
    return record(rollout, "start", [f"plan: steps {steps} %"], now)


def record(rollout: dict[str, Any], action: Action, reasons: list[str], now: float) -> dict[str, Any]:
    """``rollout`` after ``action``: its status and step moved on, and the decision added to its history."""
    plan = RolloutPlan(**rollout["plan"])
    status, step = rollout["status"], rollout["step"]
    if action in ("advance", "complete"):
        step += 1
        status = "completed" if action == "complete" else status
        rollout["step_started_feedback"] = (
            rollout["evidence"]["variant"]["right"] + rollout["evidence"]["variant"]["wrong"]
        )
    elif action == "rollback":
        status = "rolled_back"
    elif action == "abort":
        status = "aborted"
    elif action == "pause":
        status = "paused"
    elif action == "resume":
        status = "running"
    share = plan.steps[step] if status in (*ACTIVE, "completed") else 0.0
    entry = {"at": now, "action": action, "status": status, "share": share, "reasons": reasons}
    entry["evidence"] = {arm: _summary(ArmCounts.from_dict(rollout["evidence"][arm])) for arm in rollout["evidence"]}
    if rollout.get("checks"):
        entry["checks"] = rollout["checks"]
    return rollout | {
        "status": status,
        "step": step,
        "share": share,
        "updated_at": now,
        "version": rollout["version"] + 1,
        "history": [*rollout["history"], entry],
    }


def take_evidence(rollout: dict[str, Any], instance: str, variant: ArmCounts, baseline: ArmCounts) -> dict[str, Any]:
    """Add what ``instance`` (one API server process) counted since it last looked to the rollout's evidence. An
    instance seen for the first time only marks where it stands: its counts from before may predate the rollout."""
    seen = rollout["seen"].get(instance)
    evidence = dict(rollout["evidence"])
    if seen is not None:
        for arm, now in (("variant", variant), ("baseline", baseline)):
            added = now.minus(ArmCounts.from_dict(seen[arm]))
            evidence[arm] = ArmCounts.from_dict(evidence[arm]).plus(added).as_dict()
    seen_now = {"variant": variant.as_dict(), "baseline": baseline.as_dict()}
    return rollout | {"evidence": evidence, "seen": rollout["seen"] | {instance: seen_now}}


def evidence_of(
    rollout: dict[str, Any], latency_bounds: tuple[float, ...], variant_max: float, network: float
) -> Evidence:
    return Evidence(
        ArmCounts.from_dict(rollout["evidence"]["variant"]),
        ArmCounts.from_dict(rollout["evidence"]["baseline"]),
        latency_bounds,
        variant_max,
        network,
    )


def step_feedback(rollout: dict[str, Any]) -> float:
    counts = rollout["evidence"]["variant"]
    return counts["right"] + counts["wrong"] - rollout["step_started_feedback"]


def _summary(counts: ArmCounts) -> dict[str, float]:
    return {"feedback": counts.feedback, "right": counts.right, "requests": counts.requests, "errors": counts.errors}
