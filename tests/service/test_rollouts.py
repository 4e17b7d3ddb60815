"""The rollout controller's decisions on scripted evidence, its weights, and the record it keeps (no service)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.metrics import REQUEST_LATENCY_BUCKETS
from service.rollouts import (
    ArmCounts,
    Evidence,
    RolloutPlan,
    decide,
    judge,
    new_rollout,
    record,
    step_feedback,
    take_evidence,
    target_weights,
    weights_for,
    weights_to_restore,
)

BOUNDS = (*REQUEST_LATENCY_BUCKETS, float("inf"))


def latency(requests: float, seconds: float) -> tuple[float, ...]:
    """Cumulative buckets of ``requests`` observations all of about ``seconds``."""
    return tuple(requests if bound >= seconds else 0.0 for bound in BOUNDS)


def arm(
    right: float, wrong: float, requests: float = 0, errors: float = 0, seconds: float = 0.004, **more
) -> ArmCounts:
    return ArmCounts(right, wrong, requests, errors, latency(requests, seconds), **more)


def evidence(variant: ArmCounts, baseline: ArmCounts, variant_max: float = 1000, network: float = 1000) -> Evidence:
    return Evidence(variant, baseline, BOUNDS, variant_max, network)


GOOD = evidence(arm(4500, 500, 20_000), arm(4500, 500, 20_000))
ACCURACY_ONLY = RolloutPlan(max_latency_ratio=None, max_error_rate=None)


def test_a_step_advances_when_it_has_its_feedback_and_every_guardrail_holds():
    decision = decide(RolloutPlan(), "running", 0, 250, GOOD)
    assert decision.action == "advance", decision
    assert {check.name: check.state for check in decision.checks} == {
        "accuracy": "holds",
        "latency": "holds",
        "errors": "holds",
    }


def test_a_step_waits_for_its_feedback():
    decision = decide(RolloutPlan(min_feedback=200), "running", 0, 199, GOOD)
    assert decision.action == "hold" and decision.reasons == ["199 of 200 feedback in this step"]


def test_advancing_onto_the_last_step_completes():
    assert decide(RolloutPlan(steps=[1, 5, 100]), "running", 1, 500, GOOD).action == "complete"
    assert decide(RolloutPlan(steps=[1, 5, 100]), "running", 0, 500, GOOD).action == "advance"


def test_a_guardrail_not_yet_shown_holds_the_step():
    few = evidence(arm(45, 5, 50), arm(45, 5, 50))  # 50 answers each: accuracy within 2 points unprovable
    decision = decide(ACCURACY_ONLY, "running", 0, 500, few)
    assert decision.action == "hold" and decision.reasons == ["accuracy not yet shown"]
    # 100 requests cannot bound a p99 from above
    latency_unknown = evidence(arm(4500, 500, 100), arm(4500, 500, 100))
    decision = decide(RolloutPlan(max_error_rate=None), "running", 0, 500, latency_unknown)
    assert decision.action == "hold" and decision.reasons == ["latency not yet shown"]


def test_a_much_less_accurate_variant_is_rolled_back_at_once_whatever_the_step_feedback():
    bad = evidence(arm(320, 80), arm(3600, 400))  # 0.80 against 0.90, 400 feedbacks on it
    decision = decide(ACCURACY_ONLY, "running", 0, 3, bad)
    assert decision.action == "rollback" and decision.reasons == ["accuracy violated"]
    [accuracy] = decision.checks
    assert accuracy.high < -ACCURACY_ONLY.accuracy_margin and accuracy.estimate == pytest.approx(-0.1)


def test_a_slightly_less_accurate_variant_within_the_margin_is_not_rolled_back():
    within = evidence(arm(44_750, 5250), arm(45_000, 5000))  # 0.895 against 0.90, margin 0.02
    assert decide(ACCURACY_ONLY, "running", 0, 500, within).action == "advance"


def test_errors_roll_back():
    failing = evidence(arm(4500, 500, 2000, errors=200), arm(4500, 500, 2000))
    decision = decide(RolloutPlan(max_latency_ratio=None), "running", 0, 500, failing)
    assert decision.action == "rollback" and decision.reasons == ["errors violated"]


def test_slow_answers_roll_back():
    slow = evidence(arm(4500, 500, 20_000, seconds=0.09), arm(4500, 500, 20_000, seconds=0.004))
    decision = decide(RolloutPlan(max_error_rate=None), "running", 0, 500, slow)
    assert decision.action == "rollback" and decision.reasons == ["latency violated"]
    [_, latency_check] = decision.checks
    assert latency_check.low > 1.5


def test_flops_saving_guardrail():
    plan = RolloutPlan(max_latency_ratio=None, max_error_rate=None, min_flops_saving=0.2)
    saving = arm(4500, 500, images=5000, flops=5000 * 600.0)  # 40 % saved, per image at most 1000
    assert decide(plan, "running", 0, 500, evidence(saving, arm(4500, 500))).action == "advance"
    costly = arm(4500, 500, images=5000, flops=5000 * 950.0)  # 5 % saved
    decision = decide(plan, "running", 0, 500, evidence(costly, arm(4500, 500)))
    assert decision.action == "rollback" and decision.reasons == ["flops violated"]


def test_a_paused_rollout_holds_but_still_rolls_back():
    assert decide(RolloutPlan(), "paused", 0, 500, GOOD).action == "hold"
    bad = evidence(arm(320, 80), arm(3600, 400))
    assert decide(ACCURACY_ONLY, "paused", 0, 0, bad).action == "rollback"
    assert decide(ACCURACY_ONLY, "rolled_back", 0, 0, bad).action == "hold"


def test_the_plan_is_checked():
    with pytest.raises(ValidationError):
        RolloutPlan(steps=[5, 1, 100])
    with pytest.raises(ValidationError):
        RolloutPlan(steps=[50, 150])
    with pytest.raises(ValidationError):
        RolloutPlan(steps=[100])
    with pytest.raises(ValidationError):
        RolloutPlan(unknown=1)


def test_judge_checks_only_the_guardrails_the_plan_sets():
    names = [check.name for check in judge(ACCURACY_ONLY, GOOD)]
    assert names == ["accuracy"]


def test_weights_give_the_variant_its_share_and_give_the_rest_back():
    start = {"dyn": 1.0, "full": 1.0, "slim": 2.0}
    weights = target_weights(start, "dyn", "full", 0.25)
    assert weights["dyn"] / sum(weights.values()) == pytest.approx(0.25)
    assert weights["full"] / weights["slim"] == pytest.approx(0.5)  # the others keep their proportions
    assert target_weights(start, "dyn", "full", 1.0) == {"dyn": 1.0, "full": 0.0, "slim": 0.0}
    assert target_weights(start, "dyn", "full", None) == {"dyn": 0.0, "full": 1.0, "slim": 2.0}
    # a baseline that had no traffic gets some back
    assert target_weights({"dyn": 1.0, "full": 0.0}, "dyn", "full", None) == {"dyn": 0.0, "full": 1.0}


def test_the_weights_a_rollout_asks_for_follow_its_status():
    start = {"dyn": 1.0, "full": 1.0, "slim": 2.0}
    rollout = new_rollout("dyn", "full", RolloutPlan(steps=[25, 100]), start, now=0.0)
    assert weights_for(rollout) == target_weights(start, "dyn", "full", 0.25)
    paused = record(rollout, "pause", [], now=1.0)
    assert weights_for(paused) == weights_for(rollout)
    assert weights_for(record(rollout, "complete", [], now=1.0)) == {"dyn": 1.0, "full": 0.0, "slim": 0.0}
    # a guardrail failed: the variant out; the operator aborted: back where it started, the variant's weight too
    assert weights_for(record(paused, "rollback", [], now=2.0)) == {"dyn": 0.0, "full": 1.0, "slim": 2.0}
    assert weights_for(record(paused, "abort", [], now=2.0)) == start


def test_a_restart_restores_what_the_last_ended_rollout_left_while_the_settings_stand():
    settings = {"dyn": 1.0, "full": 1.0}
    plan = RolloutPlan(steps=[50, 100])
    first = record(new_rollout("dyn", "full", plan, settings, now=0.0), "complete", [], now=1.0)
    second = record(new_rollout("full", "dyn", plan, weights_for(first), 2.0, settings), "rollback", [], now=3.0)
    assert weights_to_restore(settings, [first]) == ({"dyn": 1.0, "full": 0.0}, first)
    assert weights_to_restore(settings, [second, first]) == ({"dyn": 1.0, "full": 0.0}, second)  # the last one
    assert weights_to_restore({"dyn": 2.0, "full": 1.0}, [first]) is None  # the settings changed since: they win
    assert weights_to_restore(settings, [new_rollout("dyn", "full", plan, settings, now=0.0)]) is None  # running
    assert weights_to_restore(settings, []) is None


def test_the_record_moves_through_steps_and_keeps_its_history():
    plan = RolloutPlan(steps=[1, 50, 100])
    rollout = new_rollout("dyn", "full", plan, {"dyn": 1.0, "full": 1.0}, now=100.0)
    assert (rollout["status"], rollout["share"], rollout["history"][0]["action"]) == ("running", 1, "start")
    rollout = take_evidence(rollout, "a", arm(10, 0), arm(10, 0))  # first look: where process a stands
    assert step_feedback(rollout) == 0
    rollout = take_evidence(rollout, "a", arm(50, 5), arm(60, 0))
    assert step_feedback(rollout) == 45
    rollout = record(rollout, "advance", ["every guardrail holds"], now=101.0)
    assert (rollout["step"], rollout["share"], step_feedback(rollout)) == (1, 50, 0)
    rollout = record(rollout, "pause", ["operator: pause"], now=102.0)
    assert rollout["status"] == "paused" and rollout["share"] == 50
    rollout = record(rollout, "resume", ["operator: resume"], now=103.0)
    rollout = record(rollout, "rollback", ["accuracy violated"], now=104.0)
    assert (rollout["status"], rollout["share"]) == ("rolled_back", 0.0)
    assert [entry["action"] for entry in rollout["history"]] == ["start", "advance", "pause", "resume", "rollback"]
    assert rollout["history"][1]["evidence"]["variant"]["feedback"] == 45


def test_evidence_from_several_processes_adds_up_and_survives_a_counter_reset():
    rollout = new_rollout("dyn", "full", RolloutPlan(), {"dyn": 1.0, "full": 1.0}, now=0.0)
    rollout = take_evidence(rollout, "a", arm(0, 0), arm(0, 0))
    rollout = take_evidence(rollout, "b", arm(100, 0), arm(100, 0))  # b had counted before: not evidence
    rollout = take_evidence(rollout, "a", arm(10, 1), arm(20, 0))
    rollout = take_evidence(rollout, "b", arm(105, 0), arm(110, 0))
    assert rollout["evidence"]["variant"]["right"] == 15 and rollout["evidence"]["baseline"]["right"] == 30
    rollout = take_evidence(rollout, "a", arm(3, 0), arm(0, 0))  # a restarted: its counters began again at 0
    assert rollout["evidence"]["variant"]["right"] == 18 and rollout["evidence"]["variant"]["wrong"] == 1


def test_evidence_stored_under_another_latency_bucket_layout_starts_its_histogram_afresh():
    """A rollout running across an upgrade that changed the latency buckets keeps its other evidence; its latency
    histogram starts again under the new layout instead of adding counts of unrelated buckets together."""
    old_layout = ArmCounts(right=5, requests=10, latency_buckets=(4.0, 10.0, 10.0))
    new = arm(3, 0)
    added = old_layout.plus(new)
    assert added.right == 8 and added.requests == 10 + new.requests
    assert added.latency_buckets == new.latency_buckets and len(added.latency_buckets) == len(BOUNDS)
