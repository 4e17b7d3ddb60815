"""A real ``blockdrop serve`` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.libc import signal_when_parent_ends

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange_until_closed(port: int, payload: bytes, wait_s: float = 30) -> tuple[float, bytes]:
    """Send ``payload`` to a loopback port; the seconds until the other side closed the connection, and what it
    answered (a socket timeout after ``wait_s`` fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        started = time.monotonic()
        connection.sendall(payload)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return time.monotonic() - started, received


class Server:
    def __init__(self, variants: list[dict] | None, own_group: bool = False, **settings):
        """``variants=None`` serves the default settings: the shipped checkpoints; ``own_group``: in a process group
        (a session) of its own, as a terminal or a process manager starts a command, to be signalled as a whole."""
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKDROP_")}
        env |= {"BLOCKDROP_PORT": str(self.port), "BLOCKDROP_GRPC_PORT": str(self.grpc_port)}
        # no pre-stop period in tests unless a test asks for one: SIGTERM drains at once
        env |= {"BLOCKDROP_TORCH_THREADS": "1", "BLOCKDROP_PRESTOP_S": "0", "PYTHONPATH": str(ROOT)}
        env["BLOCKDROP_API_SERVERS"] = "1"  # one process, whatever the machine's cores, unless a test asks
        if variants is not None:
            env["BLOCKDROP_VARIANTS"] = json.dumps(variants)
        env |= {f"BLOCKDROP_{k.upper()}": str(v) for k, v in settings.items()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=signal_when_parent_ends(),  # a test run killed midway leaves no server running
            start_new_session=own_group,
        )
        self._output = b""
        os.set_blocking(self.process.stdout.fileno(), False)  # ``logged`` reads what is there, never waits
        self._wait_ready()

    def logged(self) -> str:
        """Everything the server has logged so far (its stdout and stderr)."""
        with contextlib.suppress(BlockingIOError):  # (read() gives None, or raises that, when nothing is new)
            while chunk := self.process.stdout.read(65536):
                self._output += chunk
        return self._output.decode(errors="replace")

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1) as client:  # one client: each new one loads the system's CA bundle (~25 ms)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.logged()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz/ready").status_code == 200:
                        return
                time.sleep(0.1)
        raise TimeoutError("server never became ready")

    def stop(self) -> bool:
        """SIGTERM, then True if the process shut down cleanly (uvicorn re-raises the signal once it is done)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.exited_cleanly()

    def exited_cleanly(self) -> bool:
        code = self.process.wait(timeout=30)
        return code in (0, -signal.SIGTERM) and "Traceback" not in self.logged()
