"""The artifacts committed under models/checkpoints load (hashes verified) and carry their measured figures."""

import json
from pathlib import Path

import pytest
import torch

from models import load_artifact

CHECKPOINTS = Path(__file__).resolve().parents[2] / "models" / "checkpoints"
SHIPPED = sorted(p for p in CHECKPOINTS.iterdir() if (p / "manifest.json").exists()) if CHECKPOINTS.exists() else []


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_artifact_loads_and_documents_itself(folder):
    model = load_artifact(folder)
    manifest = model.manifest
    assert manifest.name == folder.name
    assert manifest.training.get("command", "").startswith("blockdrop train")
    assert manifest.training.get("train_seconds", 0) > 0
    assert "test" in manifest.metrics, "record the test figures: blockdrop eval ARTIFACT --split test --record"
    result = model.infer(torch.zeros(2, 3, manifest.input.height, manifest.input.width))
    assert result.logits.shape == (2, len(manifest.classes))


def test_the_default_variants_are_shipped():
    from service.config import Settings

    for variant in Settings().variants:
        assert (variant.artifact / "manifest.json").exists(), f"{variant.artifact} is not committed"


PROFILES = Path(__file__).resolve().parents[2] / "service" / "profiles"


@pytest.mark.parametrize("profile", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.stem)
def test_each_settings_profile_names_shipped_artifacts(profile, monkeypatch):
    """A profile's artifact paths are relative to the repository root, where `blockdrop serve --settings` runs."""
    from service.config import Settings

    monkeypatch.chdir(PROFILES.parents[1])
    monkeypatch.setenv("BLOCKDROP_SETTINGS_FILE", str(profile))
    variants = Settings().variants
    assert variants, profile
    for variant in variants:
        assert (variant.artifact / "manifest.json").exists(), f"{profile.name}: {variant.artifact} is not committed"
        kind = load_artifact(variant.artifact).manifest.kind
        assert variant.mode == "full" or kind == "blockdrop", f"{variant.name}: mode blockdrop needs a policy"


WITH_POLICY = [p for p in SHIPPED if json.loads((p / "manifest.json").read_text())["architecture"].get("policy")]


@pytest.mark.parametrize("folder", WITH_POLICY, ids=[p.name for p in WITH_POLICY])
def test_a_shipped_blockdrop_artifact_records_its_frequent_masks_at_the_threshold_it_serves(folder):
    from models.artifacts import read_manifest
    from models.signatures import parse_counted_masks

    manifest = read_manifest(folder)
    record = manifest.frequent_masks
    assert record, f"record them: blockdrop record-masks {folder.relative_to(CHECKPOINTS.parents[1])} --data-root DIR"
    assert record["threshold"] == manifest.threshold, "recorded at another threshold: run blockdrop record-masks again"
    masks, counts = parse_counted_masks(record["masks"], len(manifest.flops["blocks"]))
    assert len(masks) == record["kept"] and counts == sorted(counts, reverse=True) and sum(counts) <= record["images"]
