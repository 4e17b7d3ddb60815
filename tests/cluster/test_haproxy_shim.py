"""The HAProxy shim against the config Ray 2.60 really writes: nothing left on every interface, no stats page, the
admin socket 0600, proxy errors 503 with Retry-After, a time for the headers, and a config HAProxy itself accepts
(``haproxy -c``) and, run, bounds the headers with it."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
from ray.serve.config import HTTPOptions

from service.cluster import haproxy_shim
from tests.service.live_server import exchange_until_closed, free_port

BIND = re.compile(r"^\s*bind (\S+)", re.MULTILINE)


def ray_config(directory: Path, host: str = "127.0.0.1", port: int = 18391) -> str:
    """The config Ray's HAProxy manager writes for an HTTP frontend on ``host``."""
    config = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=port),
        socket_path=str(directory / "admin.sock"),
        server_state_base=str(directory),
        server_state_file=str(directory / "server-state"),
        metrics_socket_path=str(directory / "metrics.sock"),
    )
    api = HAProxyApi(cfg=config, config_file_path=str(directory / "haproxy.cfg"))
    api._generate_config_file_internal()
    return (directory / "haproxy.cfg").read_text()


def haproxy_accepts(config: str, directory: Path) -> bool:
    path = directory / "checked.cfg"
    path.write_text(config)
    run = subprocess.run([haproxy_shim.real_binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    return run.returncode == 0


def test_rays_own_config_listens_on_every_interface_and_leaves_the_socket_world_writable(tmp_path: Path):
    config = ray_config(tmp_path)
    assert {"*:8404", ":9101"} <= set(BIND.findall(config))
    assert "mode 666 level admin" in config


def test_the_rewritten_config_binds_only_the_host_asked_for(tmp_path: Path):
    config = haproxy_shim.rewrite(ray_config(tmp_path), tmp_path, None, 1)
    assert BIND.findall(config) == ["127.0.0.1:18391"]  # the frontend alone: no stats page, no exporter
    assert "listen stats" not in config
    assert "stats socket " + str(tmp_path / "admin.sock") + " mode 600 level admin" in config
    assert haproxy_accepts(config, tmp_path)


def test_the_exporter_binds_the_host_when_asked_for(tmp_path: Path):
    config = haproxy_shim.rewrite(ray_config(tmp_path), tmp_path, "127.0.0.1:18392", 1)
    assert sorted(BIND.findall(config)) == ["127.0.0.1:18391", "127.0.0.1:18392"]
    assert haproxy_accepts(config, tmp_path)


def test_proxy_errors_are_503_with_retry_after(tmp_path: Path):
    config = haproxy_shim.rewrite(ray_config(tmp_path), tmp_path, None, 3)
    pages = dict(re.findall(r"errorfile (50\d) (\S+)", config))
    assert set(pages) == {"502", "503", "504"}
    for code in ("502", "503"):
        page = Path(pages[code]).read_bytes()
        assert page.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 3\r\n" in page
        head, body = page.split(b"\r\n\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert body.startswith(b'{"error": ')
    assert Path(pages["504"]).read_bytes().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


def test_a_rewritten_config_is_left_as_it_is_and_an_unknown_one_is_refused(tmp_path: Path):
    once = haproxy_shim.rewrite(ray_config(tmp_path), tmp_path, None, 1)
    assert haproxy_shim.rewrite(once, tmp_path, None, 1) == once
    unknown = tmp_path / "other.cfg"
    unknown.write_text("global\n    maxconn 10\n")
    assert haproxy_shim.main(["-db", "-f", str(unknown)]) == 1  # HAProxy not started
    assert unknown.read_text() == "global\n    maxconn 10\n"


def test_the_headers_have_a_time(tmp_path: Path):
    config = haproxy_shim.rewrite(ray_config(tmp_path), tmp_path, None, 1, header_timeout_s=2.5)
    # Ray writes none: HAProxy waited `timeout client`, an hour, for the rest of a header
    assert "timeout http-request" not in ray_config(tmp_path)
    assert "timeout http-request 2500ms\n" in haproxy_shim.DEFAULTS.search(config).group()
    assert haproxy_accepts(config, tmp_path)


def test_haproxy_answers_half_a_header_with_a_408_at_the_header_timeout(tmp_path: Path):
    port = free_port()
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_shim.rewrite(ray_config(tmp_path, port=port), tmp_path, None, 1, header_timeout_s=1))
    proxy = subprocess.Popen([haproxy_shim.real_binary(), "-db", "-f", str(path)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        took, answer = exchange_until_closed(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert answer.startswith(b"HTTP/1.1 408 ") and 0.9 < took < 10, (took, answer[:100])
        # (HAProxy's own page: its connection layer answers these with messages no errorfile replaces)
        _, answer = exchange_until_closed(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")  # headers past its 16 KB buffer
    finally:
        proxy.terminate()
        proxy.wait(10)
