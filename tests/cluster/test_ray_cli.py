"""``blockdrop serve --ray`` as a user runs it: it starts a local cluster, answers, and on SIGTERM removes the
application and stops the cluster it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.live_server import free_port

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def test_serve_ray_starts_a_cluster_serves_and_stops_it_on_sigterm():
    port = free_port()
    variant = {
        "name": "blockdrop",
        "artifact": str(ROOT / "models" / "checkpoints" / "cifar10-resnet32-blockdrop"),
        "mode": "blockdrop",
        "ray": {"min_replicas": 1, "max_replicas": 1},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKDROP_")}
    env |= {"BLOCKDROP_PORT": str(port), "BLOCKDROP_VARIANTS": json.dumps([variant]), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--ray", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.5)
        body = (ROOT / "service" / "samples" / "cat.png").read_bytes()
        answer = httpx.post(f"{url}/v1/classify", content=body, headers={"content-type": "image/png"}, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["prediction"]["label"] == "cat"
        assert answer.headers["x-served-by"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    assert f"serving on http://127.0.0.1:{port} through Ray Serve" in output
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz/live", timeout=2)
