"""A start that finds its port taken, or an HAProxy left behind by an earlier run, says so and how to clear it."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from service.cluster import preflight, processes
from service.config import Settings
from tests.service.live_server import free_port


def test_a_taken_port_is_named_with_the_process_that_holds_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(preflight.StartRefused) as refused:
            preflight.check(Settings(port=port))
    message = str(refused.value)
    assert f"port {port} on 127.0.0.1 (the service's port, --port) is taken by pid " in message
    assert "choose another port" in message


def test_free_ports_pass():
    preflight.check(Settings(port=free_port(), ray={"dashboard": True, "dashboard_port": free_port()}))


def test_a_stale_haproxy_is_named_with_how_to_stop_it():
    """An HAProxy whose parent is no Ray actor (here: this test), with its config where a run keeps it."""
    pytest.importorskip("ray")
    from service.cluster.haproxy_shim import real_binary

    port = free_port()
    with tempfile.TemporaryDirectory(prefix=preflight.HAPROXY_PREFIX, dir="/tmp") as directory:
        config = Path(directory) / "haproxy.cfg"
        config.write_text(f"defaults\n    mode http\nfrontend f\n    bind 127.0.0.1:{port}\n")
        stale = subprocess.Popen([real_binary(), "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
        try:
            while port not in {lst.port for lst in processes.listeners({stale.pid})}:
                assert stale.poll() is None, "haproxy did not start"
                time.sleep(0.05)
            with pytest.raises(preflight.StartRefused) as refused:
                preflight.check(Settings(port=free_port()))
        finally:
            stale.kill()
            stale.wait()
    message = str(refused.value)
    assert f"an HAProxy left behind by an earlier `blockdrop serve --ray` is still running: pid {stale.pid}" in message
    assert f"listening on 127.0.0.1:{port}" in message
    assert f"stop it with `kill {stale.pid}`" in message
