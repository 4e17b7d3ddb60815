"""``build_experiment`` on registries filled with known observations, ``RequestRate`` on a fake clock, and
``GET /v1/experiment`` through the app."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from models.blockdrop import InferenceResult
from service import sequential
from service.app import create_app
from service.experiment import RequestRate, build_experiment, request_totals
from service.metrics import ServiceMetrics
from service.stats import two_proportion_z_test, wilson_interval
from tests.service.conftest import make_settings, png_bytes

MODELS = [
    {
        "name": "dyn",
        "model": "m-dyn",
        "mode": "blockdrop",
        "blocks": 3,
        "stages": [1, 2],
        "flops": {"full": 1000},
        "traffic_share": 0.75,
    },
    {
        "name": "full",
        "model": "m-full",
        "mode": "full",
        "blocks": 3,
        "stages": [1, 2],
        "flops": {"full": 1000},
        "traffic_share": 0.25,
    },
]


def batch(masks: list[str], flops: list[int]) -> InferenceResult:
    keep = torch.tensor([[c == "1" for c in mask] for mask in masks])
    return InferenceResult(torch.zeros(len(masks), 10), keep, torch.tensor(flops))


def known_metrics() -> ServiceMetrics:
    """dyn: 8 requests (6 ok, 2 errors), 4 images; full: 4 requests, 4 images; feedback and shadow runs."""
    metrics = ServiceMetrics()
    metrics.requests.labels("dyn", "200").inc(6)
    metrics.requests.labels("dyn", "415").inc(2)
    metrics.requests.labels("full", "200").inc(4)
    metrics.requests.labels("none", "404").inc(1)
    for seconds in [0.003] * 6 + [0.02] * 2:  # 6 in (0.002873, 0.003014], 2 in (0.01957, 0.02054]
        metrics.latency.labels("dyn").observe(seconds)
    for seconds in [0.008] * 4:  # (0.007867, 0.008254]
        metrics.latency.labels("full").observe(seconds)
    metrics.observe_batch("dyn", batch(["110", "100", "111", "010"], [700, 400, 1000, 400]), 0.01, 1000)
    metrics.observe_batch("full", batch(["111"] * 4, [1000] * 4), 0.01, 1000)
    metrics.feedback.labels("dyn", "right").inc(30)
    metrics.feedback.labels("dyn", "wrong").inc(10)
    metrics.feedback.labels("full", "right").inc(45)
    metrics.feedback.labels("full", "wrong").inc(5)
    metrics.shadow.labels("dyn", "full", "agree").inc(3)
    metrics.shadow.labels("dyn", "full", "disagree").inc(1)
    metrics.shadow.labels("dyn", "full", "skipped").inc(2)
    return metrics


def test_the_report_of_known_observations():
    report = build_experiment(known_metrics().collect(), MODELS, "full")
    assert report["baseline"] == "full" and report["note"] is None
    assert report["requests"] == {"routed": 12, "unrouted": 1, "per_second": None}
    dyn, full = report["variants"]
    assert dyn["traffic"] == {"configured": 0.75, "observed": 8 / 12, "requests": 8}
    assert dyn["requests"]["errors"] == 2 and dyn["requests"]["by_status"] == {"200": 6, "415": 2}
    # p50: rank 4 of 8, 4 into the (0.002873, 0.003014] bucket's 6 (service.metrics.REQUEST_LATENCY_BUCKETS)
    assert dyn["latency_s"]["p50"] == pytest.approx(0.002873 + (0.003014 - 0.002873) * 4 / 6)
    # p95: rank 7.6, 1.6 into the (0.01957, 0.02054] bucket's 2
    assert dyn["latency_s"]["p95"] == pytest.approx(0.01957 + (0.02054 - 0.01957) * 1.6 / 2)
    assert dyn["latency_s"]["mean"] == pytest.approx((6 * 0.003 + 2 * 0.02) / 8)
    assert full["latency_s"]["p50"] == pytest.approx(0.007867 + (0.008254 - 0.007867) * 2 / 4)
    assert dyn["images"] == 4
    assert dyn["flops"] == {
        "mean": 625,
        "network": 1000,
        "saved": 0.375,
        "fraction_of_baseline": 0.625,
        "saved_vs_baseline": 0.375,
    }
    assert full["flops"]["saved"] == 0 and full["flops"]["saved_vs_baseline"] == 0
    assert dyn["skipped_blocks"]["mean"] == pytest.approx((1 + 2 + 0 + 2) / 4)
    assert dyn["skipped_blocks"]["buckets"] == [
        {"le": 0, "count": 1},
        {"le": 1, "count": 1},
        {"le": 2, "count": 2},
        {"le": 3, "count": 0},
    ]
    assert dyn["block_executions"] == {"counts": [3, 3, 1], "rates": [0.75, 0.75, 0.25]}
    assert dyn["stages"] == [1, 2]
    [shadow] = dyn["shadow"]
    assert shadow | {"interval": None} == {
        "shadow": "full",
        "agree": 3,
        "disagree": 1,
        "skipped": 2,
        "agreement": 0.75,
        "interval": None,
    }
    assert shadow["interval"] == pytest.approx(wilson_interval(3, 4)._asdict())
    feedback = dyn["feedback"]
    assert (feedback["right"], feedback["wrong"], feedback["n"], feedback["accuracy"]) == (30, 10, 40, 0.75)
    assert feedback["interval"] == pytest.approx(wilson_interval(30, 40)._asdict())
    expected = two_proportion_z_test(30, 40, 45, 50)
    assert feedback["fixed_horizon"] == pytest.approx(
        {"baseline": "full", "difference": -0.15, "z": expected.z, "p_value": expected.p_value, "significant": False}
    )
    # pooled 75/90, standard error sqrt(5/6 * 1/6 * (1/40 + 1/50)) = 0.0791, z = -1.897: close, not significant
    assert (expected.z, expected.p_value) == pytest.approx((-1.8974, 0.0578), abs=1e-4)
    assert full["feedback"]["fixed_horizon"] is None and full["shadow"] == []


def test_without_the_baseline_the_report_compares_nothing():
    report = build_experiment(known_metrics().collect(), MODELS, "resnet110")
    assert report["baseline"] is None and report["requested_baseline"] == "resnet110"
    assert "no variant named 'resnet110'" in report["note"]
    for variant in report["variants"]:
        assert variant["feedback"]["fixed_horizon"] is None
        assert variant["flops"]["fraction_of_baseline"] is None and variant["flops"]["saved_vs_baseline"] is None
    assert report["variants"][0]["feedback"]["accuracy"] == 0.75  # everything else is still there


def test_the_default_baseline_is_full_else_the_first_variant_that_runs_every_block():
    assert build_experiment(known_metrics().collect(), MODELS)["baseline"] == "full"
    renamed = [dict(model, name="full110") if model["name"] == "full" else model for model in MODELS]
    report = build_experiment(known_metrics().collect(), renamed)
    assert report["baseline"] == "full110" and report["requested_baseline"] == "full110"
    only_dynamic = [model for model in MODELS if model["mode"] != "full"]
    assert build_experiment(known_metrics().collect(), only_dynamic)["baseline"] is None


def test_families_of_several_replicas_add_up():
    one, two = known_metrics(), known_metrics()
    report = build_experiment([*one.collect(), *two.collect()], MODELS)
    dyn = report["variants"][0]
    assert dyn["requests"]["total"] == 16 and dyn["images"] == 8
    assert dyn["feedback"]["right"] == 60 and dyn["block_executions"]["rates"] == [0.75, 0.75, 0.25]
    # same distribution, twice the count
    assert dyn["latency_s"]["p50"] == pytest.approx(0.002873 + (0.003014 - 0.002873) * 4 / 6)


def test_a_variant_without_traffic_reports_nothing_rather_than_failing():
    metrics = ServiceMetrics()
    metrics.init_variant("dyn", "m-dyn", "blockdrop", "blockdrop", 0.5, 3)
    report = build_experiment(metrics.collect(), MODELS[:1], "dyn", rates=None)
    [dyn] = report["variants"]
    assert dyn["traffic"]["observed"] is None and dyn["requests"]["total"] == 0
    assert dyn["latency_s"] == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None}
    assert dyn["flops"]["mean"] is None and dyn["flops"]["saved"] is None
    assert dyn["block_executions"]["rates"] == [None, None, None]
    assert dyn["feedback"]["accuracy"] is None and dyn["feedback"]["interval"] is None


def test_request_rate_over_the_recent_window():
    now = [0.0]
    rate = RequestRate(window_s=30, min_span_s=1, clock=lambda: now[0])
    assert rate.observe({"a": 0}) is None  # one snapshot: no span yet
    now[0] = 0.5
    assert rate.observe({"a": 10}) is None  # under min_span_s
    now[0] = 10
    assert rate.observe({"a": 50, "b": 5}) == ({"a": 5.0, "b": 0.5}, 10)
    now[0] = 40  # the newest snapshot at least 30 s old is the one at 10 s
    assert rate.observe({"a": 110, "b": 5}) == ({"a": 2.0, "b": 0.0}, 30)
    now[0] = 45
    per_second, span = rate.observe({"a": 20, "b": 8})  # a's counter was reset: no rate for it over this span
    assert per_second == {"b": pytest.approx(3 / 35)} and span == 35


def test_request_totals_reads_the_request_counter():
    assert request_totals(known_metrics().collect()) == {"dyn": 8, "full": 4, "none": 1}


@pytest.fixture
def app_client(artifacts):
    app = create_app(make_settings(artifacts))
    app.state.request_rate = RequestRate(min_span_s=0)  # a rate from the second report on, without waiting
    with TestClient(app) as client:
        yield client


def classify(client, variant: str, seed: int) -> dict:
    response = client.post(
        f"/v1/classify?variant={variant}", content=png_bytes(seed=seed), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    return response.json()


def test_the_experiment_route_reports_the_traffic_it_saw(app_client):
    served = [classify(app_client, "blockdrop", seed) for seed in range(5)] + [classify(app_client, "full", 9)]
    for answer, label in zip(served, [answer["prediction"]["class_id"] for answer in served[:3]]):
        assert (
            app_client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": label}).status_code
            == 200
        )
    first = app_client.get("/v1/experiment").json()
    assert first["rate_span_s"] is None and first["baseline"] == "full"
    blockdrop, full = first["variants"]
    assert blockdrop["requests"]["total"] == 5 and full["requests"]["total"] == 1
    assert blockdrop["traffic"]["configured"] == 0.5 and blockdrop["traffic"]["observed"] == pytest.approx(5 / 6)
    assert blockdrop["feedback"]["right"] == 3 and blockdrop["feedback"]["n"] == 3
    assert blockdrop["flops"]["mean"] == pytest.approx(sum(a["flops"]["executed"] for a in served[:5]) / 5)
    ran = [sum(a["blocks"]["mask"][b] == "1" for a in served[:5]) for b in range(3)]
    assert blockdrop["block_executions"]["counts"] == ran
    assert blockdrop["stages"] == [1, 1, 1]
    classify(app_client, "full", 10)
    second = app_client.get("/v1/experiment").json()
    assert second["rate_span_s"] > 0 and second["variants"][1]["requests"]["per_second"] > 0


def test_the_experiment_route_takes_a_baseline_and_is_documented(app_client):
    report = app_client.get("/v1/experiment?baseline=blockdrop").json()
    assert report["baseline"] == "blockdrop"
    absent = app_client.get("/v1/experiment?baseline=resnet110")
    assert absent.status_code == 200 and absent.json()["baseline"] is None and absent.json()["note"]
    assert app_client.get(f"/v1/experiment?baseline={'x' * 65}").status_code == 422
    schema = app_client.get("/openapi.json").json()
    answer = schema["paths"]["/v1/experiment"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ExperimentReport"}
    assert "feedback" in schema["components"]["schemas"]["VariantReport"]["properties"]


def test_the_report_has_always_valid_intervals_and_a_decision_per_variant():
    report = build_experiment(known_metrics().collect(), MODELS, "full", margin=0.05)
    dyn, full = report["variants"]
    assert report["margin"] == 0.05 and full["always_valid"] is None
    accuracy = dyn["always_valid"]["accuracy"]
    expected = sequential.proportion_difference(30, 40, 45, 50)
    assert (accuracy["estimate"], accuracy["low"], accuracy["high"]) == pytest.approx(tuple(expected))
    # 0.75 against 0.90 on 40 and 50 feedbacks: the fixed-horizon test is close to p < 0.05, the CS is wide
    assert accuracy["low"] < -0.15 < accuracy["high"] and accuracy["high"] > 0
    assert accuracy["decision"] == "collecting"
    flops = dyn["always_valid"]["flops_fraction_of_baseline"]
    assert flops["estimate"] == pytest.approx(0.625) and flops["low"] <= 0.625 <= flops["high"]
    assert dyn["always_valid"]["latency_p99_ratio"]["high"] is None  # 8 requests cannot bound a p99


def test_the_decision_follows_the_evidence():
    metrics = known_metrics()
    metrics.feedback.labels("dyn", "right").inc(3000)
    metrics.feedback.labels("full", "right").inc(3000)
    metrics.feedback.labels("dyn", "wrong").inc(1000)
    metrics.feedback.labels("full", "wrong").inc(200)
    dyn = build_experiment(metrics.collect(), MODELS, "full")["variants"][0]
    assert dyn["always_valid"]["accuracy"]["decision"] == "worse"
    assert dyn["feedback"]["fixed_horizon"]["significant"]
