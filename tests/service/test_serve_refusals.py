"""``blockdrop serve`` refuses a device this machine lacks, a bad artifact or a port taken in one line, before any
server starts (it used to start them, and each logged a traceback and "Application startup failed")."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from tests.cli_refusal import refusal
from tests.service.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
RESNET = ROOT / "models" / "checkpoints" / "cifar10-resnet32"


@pytest.fixture(autouse=True)
def no_server_starts(monkeypatch):
    """A start that got past the check fails the test instead of serving."""

    def started(*args, **kwargs):
        raise AssertionError("a server was started")

    monkeypatch.setattr("service.server.serve", started)
    monkeypatch.setattr("service.multiprocess.supervisor.serve_api_servers", started)
    monkeypatch.setattr("cli.serve._serve_on_ray", started)
    for name in ("BLOCKDROP_DEVICE", "BLOCKDROP_RAY", "BLOCKDROP_SETTINGS_FILE"):
        monkeypatch.delenv(name, raising=False)


def serve_refusal(monkeypatch, variants: list[dict], *argv: str, **settings: str) -> str:
    monkeypatch.setenv("BLOCKDROP_VARIANTS", json.dumps(variants))
    for key, value in settings.items():
        monkeypatch.setenv(f"BLOCKDROP_{key.upper()}", value)
    return refusal(["serve", *argv])


def test_an_artifact_folder_that_is_not_there_is_named_with_its_variant(monkeypatch, tmp_path):
    message = serve_refusal(monkeypatch, [{"name": "x", "artifact": str(tmp_path / "nope"), "mode": "full"}])
    manifest = tmp_path / "nope" / "manifest.json"
    assert message == f"blockdrop serve: error: variant 'x': {manifest} not found: not an artifact folder\n"


def test_a_changed_weights_file_is_refused(monkeypatch, tmp_path):
    copy = shutil.copytree(RESNET, tmp_path / "copy")
    with open(copy / "model.safetensors", "r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\0\0\0\1")
    message = serve_refusal(monkeypatch, [{"name": "full", "artifact": str(copy), "mode": "full"}])
    assert "variant 'full':" in message and "does not match its sha256 in the manifest" in message


def test_blockdrop_mode_on_an_artifact_without_a_policy_is_refused(monkeypatch):
    message = serve_refusal(monkeypatch, [{"name": "bd", "artifact": str(RESNET), "mode": "blockdrop"}])
    assert message == "blockdrop serve: error: variant 'bd': mode 'blockdrop' needs an artifact with a policy\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_refused(monkeypatch):
    message = serve_refusal(monkeypatch, [{"name": "full", "artifact": str(RESNET), "mode": "full"}], device="cuda")
    assert message == "blockdrop serve: error: device 'cuda': no CUDA GPU is visible to torch on this machine\n"


@pytest.mark.parametrize("held", ["port", "grpc_port"])
def test_a_port_taken_is_named_with_the_process_that_holds_it(monkeypatch, held):
    variants = [{"name": "full", "artifact": str(RESNET), "mode": "full"}]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {"port": str(free_port()), "grpc_port": str(free_port()), held: str(taken)}
        message = serve_refusal(monkeypatch, variants, host="127.0.0.1", **ports)
    what = "the service's port, --port" if held == "port" else "gRPC, GRPC_PORT"
    assert message.startswith(f"blockdrop serve: error: port {taken} on 127.0.0.1 ({what}) is taken by pid ")
    assert message.endswith("; stop it or choose another port\n")


def test_the_same_check_before_a_local_ray_cluster_but_not_for_one_elsewhere(monkeypatch, tmp_path):
    bad = [{"name": "x", "artifact": str(tmp_path / "nope"), "mode": "full"}]
    assert "variant 'x'" in serve_refusal(monkeypatch, bad, "--ray")
    # a cluster elsewhere has its own files: the artifact's path is the cluster's, not this machine's
    with pytest.raises(AssertionError, match="a server was started"):
        serve_refusal(monkeypatch, bad, "--ray-address", "ray://elsewhere:10001")


def test_invalid_settings_are_each_named_in_one_line_without_pydantics_dump(monkeypatch):
    variants = [{"name": "a", "artifact": str(RESNET), "mode": "full"}]
    message = serve_refusal(monkeypatch, variants, device="tpu", max_top_k="abc")
    assert message == (
        "blockdrop serve: error: invalid settings: device: device must be auto, cpu, cuda or cuda:N (got 'tpu'); "
        "max_top_k: Input should be a valid integer, unable to parse string as an integer (got 'abc')\n"
    )
    monkeypatch.delenv("BLOCKDROP_DEVICE")
    monkeypatch.delenv("BLOCKDROP_MAX_TOP_K")
    twice = serve_refusal(monkeypatch, variants * 2)  # a rule across fields: its message alone
    assert twice == "blockdrop serve: error: invalid settings: variant names must be unique: ['a', 'a']\n"
