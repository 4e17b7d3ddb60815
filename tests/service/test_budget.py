"""Per-request compute budgets: the budget -> threshold mapping on a calibrated curve, batches that mix thresholds
giving each row the mask it would get alone, and the HTTP contract (header, query, levels, 422s, plain networks)."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import torch
from fastapi.testclient import TestClient

from models.artifacts import read_manifest, write_manifest
from service.app import create_app
from service.batching import MicroBatcher
from service.budget import parse_budget, point_for
from service.config import VariantSettings
from service.errors import Unprocessable
from service.variants import load_variant
from tests.service.conftest import make_settings, png_bytes

PNG = {"content-type": "image/png"}
CURVE = [  # a hand-made curve: accuracy falls as the threshold rises and the FLOPs fall
    {"threshold": 0.4, "accuracy": 0.90, "flops_fraction": 0.95},
    {"threshold": 0.5, "accuracy": 0.91, "flops_fraction": 0.80},
    {"threshold": 0.6, "accuracy": 0.88, "flops_fraction": 0.60},
    {"threshold": 0.7, "accuracy": 0.88, "flops_fraction": 0.55},
    {"threshold": 0.8, "accuracy": 0.70, "flops_fraction": 0.40},
]
LEVELS = {"fast": 0.6, "balanced": 0.75, "accurate": 1.0}


@pytest.mark.parametrize(
    ("budget", "threshold"),
    [(1.0, 0.5), (0.85, 0.5), (0.8, 0.5), (0.79, 0.7), (0.6, 0.7), (0.55, 0.7), (0.5, 0.8), (0.4, 0.8)],
)
def test_a_budget_maps_to_the_most_accurate_point_that_fits(budget, threshold):
    # 0.6 and 0.55 are equally accurate: the cheaper (0.7) wins; 0.4 at 0.95 FLOPs loses to 0.5 everywhere
    assert point_for(CURVE, budget, "v")["threshold"] == threshold


def test_budgets_out_of_range_or_unknown_are_refused_with_the_valid_range():
    assert parse_budget("fast", LEVELS) == 0.6 and parse_budget("0.7", LEVELS) == 0.7 and parse_budget("1", LEVELS) == 1
    for text in ("0", "-0.1", "1.5", "nan", "inf", "quick", ""):
        with pytest.raises(Unprocessable, match=r"\(0, 1\]") as refused:
            parse_budget(text, LEVELS)
        assert "fast (0.6)" in refused.value.message
    with pytest.raises(Unprocessable, match=r"calibrated range is \[0.400, 1\]"):
        point_for(CURVE, 0.3, "v")


def _calibrated(artifacts, tmp_path):
    folder = tmp_path / "calibrated"
    shutil.copytree(artifacts["tiny-blockdrop"], folder)
    manifest = read_manifest(folder)
    manifest.calibration = {"split": "val", "points": CURVE}
    write_manifest(folder, manifest)
    return folder


def test_a_mixed_batch_gives_each_row_its_own_mask(artifacts):
    variant = load_variant(VariantSettings(name="b", artifact=artifacts["tiny-blockdrop"], mode="blockdrop"), "cpu")
    batch = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    thresholds = torch.tensor([0.1, 0.5, 0.9, float("nan"), 0.3, 0.7])
    mixed = variant.infer(batch, thresholds)
    for i, t in enumerate(thresholds.tolist()):
        alone = variant.infer(batch[i : i + 1], None if t != t else torch.tensor([t]))
        assert torch.equal(mixed.keep_mask[i], alone.keep_mask[0]) and mixed.flops[i] == alone.flops[0]
    assert not torch.equal(mixed.keep_mask[0], mixed.keep_mask[2])  # the thresholds did make a difference

    async def through_the_batcher():
        batcher = MicroBatcher("b", variant.infer, 8, 0.05, 16)
        batcher.start()
        batcher.expect(len(batch))
        deadline = time.monotonic() + 30
        futures = [batcher.submit(batch[i], deadline, None if t != t else t) for i, t in enumerate(thresholds.tolist())]
        batcher.expect(-len(batch))
        results = await asyncio.gather(*futures)
        batcher.stop(5)
        return results

    results = asyncio.run(through_the_batcher())
    assert all(torch.equal(r.keep_mask, mixed.keep_mask[i]) for i, r in enumerate(results))


def test_the_budget_over_http(artifacts, tmp_path):
    variants = [
        VariantSettings(name="blockdrop", artifact=_calibrated(artifacts, tmp_path), mode="blockdrop"),
        VariantSettings(name="plain", artifact=artifacts["tiny-blockdrop"], mode="blockdrop"),
        VariantSettings(name="full", artifact=artifacts["tiny-resnet"], mode="full"),
    ]
    with TestClient(create_app(make_settings(artifacts, variants=variants))) as client:

        def classify(path: str, **headers: str):
            return client.post(path, content=png_bytes(seed=2), headers=PNG | headers)

        default = classify("/v1/classify?variant=blockdrop").json()["compute"]
        assert default == {"threshold": 0.5}  # the artifact's own
        assert classify("/v1/classify?variant=blockdrop&budget=0.6").json()["compute"] == {
            "threshold": 0.7,
            "budget": 0.6,
        }
        by_header = classify("/v1/classify?variant=blockdrop", **{"x-compute-budget": "fast"}).json()["compute"]
        assert by_header == {"threshold": 0.7, "budget": 0.6}
        query_wins = classify("/v1/classify?variant=blockdrop&budget=accurate", **{"x-compute-budget": "0.4"})
        assert query_wins.json()["compute"]["threshold"] == 0.5
        for budget, fragment in (("1.5", "(0, 1]"), ("turbo", "(0, 1]"), ("0.3", "calibrated range")):
            refused = classify(f"/v1/classify?variant=blockdrop&budget={budget}")
            assert refused.status_code == 422 and fragment in refused.json()["error"]
        uncalibrated = classify("/v1/classify?variant=plain&budget=0.5")
        assert uncalibrated.status_code == 422 and "blockdrop calibrate" in uncalibrated.json()["error"]
        plain = classify("/v1/classify?variant=full&budget=0.5").json()["compute"]
        assert plain["threshold"] is None and "ignored" in plain["note"]
        for budget in ("1.5", "turbo", "nan", "0"):  # malformed on every variant, not only where a budget applies
            refused = classify(f"/v1/classify?variant=full&budget={budget}")
            assert refused.status_code == 422 and "(0, 1]" in refused.json()["error"], budget
        tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
        for budget in ("0.6", 0.6):  # v2 REST takes a number too, as gRPC's double_param
            v2 = client.post("/v2/models/blockdrop/infer", json={"inputs": [tensor], "parameters": {"budget": budget}})
            assert v2.json()["parameters"] == {"variant": "blockdrop", "threshold": 0.7, "budget": 0.6}
        for budget, status in ((1.5, 422), (True, 400), ([0.6], 400)):
            v2 = client.post("/v2/models/blockdrop/infer", json={"inputs": [tensor], "parameters": {"budget": budget}})
            assert v2.status_code == status, (budget, v2.text)
