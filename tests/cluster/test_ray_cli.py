"""``blockdrop serve --ray`` as a user runs it: it starts a local cluster with Ray's dashboard on the host asked
for, answers, and when a SIGTERM reaches its whole process group (a terminal closing, a process manager) it stops
every process it started, HAProxy included, and frees its ports."""

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

from service.cluster import processes
from tests.service.live_server import free_port

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def wait_ready(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.5)


def haproxy_below(pid: int) -> set[int]:
    return {p for p in processes.descendants(pid) if Path((processes.command_line(p) or [""])[0]).name == "haproxy"}


def serving_haproxy(pid: int, port: int) -> tuple[int, list[str], set[tuple[str, int]]] | None:
    """The HAProxy below ``pid`` that listens on ``port``: its pid, command line and every address it listens on,
    each read once. Ray reloads HAProxy as replicas come and go (``-sf``): the old one stops listening and ends
    beside the new one, so a pid seen a moment ago may be gone; the highest pid (as a rule the newest) goes first."""
    for haproxy in sorted(haproxy_below(pid), reverse=True):
        words = processes.command_line(haproxy)
        bound = {(lst.host, lst.port) for lst in processes.listeners({haproxy})}
        if "-f" in words and any(listening_port == port for _, listening_port in bound):
            return haproxy, words, bound
    return None


def wait_for_serving_haproxy(
    pid: int, port: int, seconds: float = 10.0
) -> tuple[int, list[str], set[tuple[str, int]]] | None:
    deadline = time.monotonic() + seconds
    while (found := serving_haproxy(pid, port)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def holders_of(port: int) -> str:
    """Who listens on ``port``, each with its line of ancestors: what a failure needs to say."""
    lines = []
    for holder in {lst.pid for lst in processes.listeners() if lst.port == port}:
        chain, pid = [], holder
        while pid and pid > 1 and len(chain) < 12:
            chain.append(processes.describe(pid))
            pid = processes.parent(pid)
        lines.append(" <- ".join(chain))
    return f"no HAProxy below the service; on port {port}: " + ("; ".join(lines) or "nobody")


def test_serve_ray_serves_with_the_dashboard_on_its_host_and_a_group_sigterm_leaves_nothing():
    port, dashboard = free_port(), free_port()
    variant = {
        "name": "blockdrop",
        "artifact": str(ROOT / "models" / "checkpoints" / "cifar10-resnet32-blockdrop"),
        "mode": "blockdrop",
        "ray": {"min_replicas": 1, "max_replicas": 1},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKDROP_")}
    env |= {
        "BLOCKDROP_PORT": str(port),
        "BLOCKDROP_VARIANTS": json.dumps([variant]),
        "BLOCKDROP_RAY": json.dumps({"dashboard_port": dashboard}),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--ray", "--ray-dashboard", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    url = f"http://127.0.0.1:{port}"
    started: set[int] = set()
    try:
        wait_ready(process, url)
        body = (ROOT / "service" / "samples" / "cat.png").read_bytes()
        answer = httpx.post(f"{url}/v1/classify", content=body, headers={"content-type": "image/png"}, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["prediction"]["label"] == "cat"
        assert answer.headers["x-served-by"]

        # the HAProxy serving the port, below the service (waited for: it may be mid-reload; if it never comes the
        # failure says who holds the port), listening there and nowhere else
        found = wait_for_serving_haproxy(process.pid, port)
        assert found is not None, holders_of(port)
        _, words, haproxy_bound = found
        assert haproxy_bound == {("127.0.0.1", port)}
        private = Path(words[words.index("-f") + 1]).parent.parent  # /tmp/bdhap-…/NODE_ID/haproxy.cfg
        started = processes.descendants(process.pid)
        bound = {(lst.host, lst.port) for lst in processes.listeners(started)}
        assert ("127.0.0.1", dashboard) in bound
        # Ray's own command line reaches the cluster through the dashboard (with Ray's token authentication)
        status = subprocess.run(
            [str(Path(sys.executable).parent / "serve"), "status", "-a", f"http://127.0.0.1:{dashboard}"],
            env=env | {"RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "variant-blockdrop" in status.stdout and "RUNNING: 1" in status.stdout
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        print(output)  # what the service said, shown should the test fail
    assert process.returncode == 0, output
    assert f"serving on http://127.0.0.1:{port} through Ray Serve" in output
    left = [processes.describe(pid) for pid in started if processes.alive(pid)]
    assert left == []
    assert not [lst for lst in processes.listeners() if lst.port in (port, dashboard)]
    assert private.name.startswith("bdhap-")
    assert not private.exists()  # its HAProxy files removed
