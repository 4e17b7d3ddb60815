import json

import pytest
import torch

from models import load_artifact, save_artifact
from models.artifacts import ArtifactError, InputSpec, Manifest
from models.blockdrop import BlockDropModel
from models.policy import PolicyConfig, PolicyNet
from models.resnet import cifar_resnet
from tests.conftest import randomize_batchnorm


def _manifest(name: str = "tiny") -> Manifest:
    return Manifest(
        name=name,
        kind="blockdrop",
        architecture={},
        classes=[f"c{i}" for i in range(10)],
        input=InputSpec(32, 32, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        metrics={"test_accuracy": 0.5},
        training={"command": "test"},
    )


@pytest.fixture
def tiny_artifact(tmp_path):
    model = BlockDropModel(
        randomize_batchnorm(cifar_resnet(8)), randomize_batchnorm(PolicyNet(PolicyConfig("cifar", 3)))
    )
    save_artifact(model.eval(), tmp_path / "tiny", _manifest())
    return model, tmp_path / "tiny"


def test_round_trip_gives_identical_results(tiny_artifact):
    model, path = tiny_artifact
    loaded = load_artifact(path)
    x = torch.randn(4, 3, 32, 32)
    expected, actual = model.infer(x, threshold=0.4), loaded.infer(x, threshold=0.4)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.keep_mask, actual.keep_mask)
    assert torch.equal(expected.flops, actual.flops)
    assert not loaded.training
    manifest = loaded.manifest
    assert manifest.input.mean == (0.5, 0.5, 0.5) and manifest.metrics == {"test_accuracy": 0.5}
    assert manifest.architecture["policy"]["num_blocks"] == 3
    assert manifest.flops["full"] == model.flops_table.full


def test_manifest_lists_the_sha256_of_the_weights(tiny_artifact):
    _, path = tiny_artifact
    data = json.loads((path / "manifest.json").read_text())
    assert data["format_version"] == 1
    assert len(data["files"]["model.safetensors"]["sha256"]) == 64


def test_weights_changed_by_one_byte_are_refused_naming_the_file(tiny_artifact):
    _, path = tiny_artifact
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not match its sha256"):
        load_artifact(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m.update(kind="transformer"), "unknown artifact kind 'transformer'"),
        (lambda m: m.pop("classes"), "lacks the field 'classes'"),
    ],
)
def test_bad_manifests_are_refused_clearly(tiny_artifact, edit, message):
    _, path = tiny_artifact
    data = json.loads((path / "manifest.json").read_text())
    edit(data)
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        load_artifact(tmp_path / "nowhere")
