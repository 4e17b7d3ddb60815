"""The supervisor of ``blockdrop serve --api-servers N``: it binds the HTTP port once, starts one model server per
variant replica and N API servers on that port, watches them, and replaces one that dies or hangs; on SIGTERM it
tells every API server to drain, then stops the model servers, and leaves nothing behind (processes or files).

Model servers are watched by their heartbeat: one silent for ``worker_heartbeat_timeout_s`` is killed and started
again, once, here (API servers only reconnect). API servers are watched by a heartbeat their event loop writes: one
whose loop has not run for ``API_SERVER_SILENCE_S`` (stopped, or stuck in a call that never returns) is killed and
replaced; the connections it held are lost, the others' are not. The supervisor beats too, once a round of its
watch, and an API server answers ``/healthz/live`` with 503 while that beat is older than ``SUPERVISOR_SILENCE_S``
(service/multiprocess/backend.py): a supervisor that no longer watches (stopped, stuck) would replace nothing, so
an orchestrator's liveness probe restarts the service. A process that fails before it ever served is
started again ever more slowly (1 s doubling to 60 s); at start-up such a failure stops the service with its reason
instead. Starts run beside the watching (service/fork_server.py's ForkStart): a fork server that does not fork (stopped)
holds up that start alone, until it is ended (``STOPPED_FORK_SERVER_S`` or ``FORK_TIMEOUT_S`` later) and the child
started again at once, without a backoff; a killed one takes none of the children it forked with it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

import numpy as np

from service.config import Settings
from service.fork_server import (
    SERVER_MODULES,
    ForkedProcess,
    ForkServerEnded,
    ForkStart,
    Lifeline,
    fork_server_context,
)
from service.multiprocess import api_server, frames, model_server, shared_state
from service.multiprocess.api_server import ApiServerSpec
from service.multiprocess.model_server import ModelServerSpec
from service.multiprocess.runtime import RuntimeLayout
from service.multiprocess.shared_memory import make_runtime_dir, remove_runtime_dir
from service.variants import ExecutionOptions
from service.worker import RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S, START_TIMEOUT_S, start_timeout_s

log = logging.getLogger(__name__)

WATCH_EVERY_S = 0.1
STOP_GRACE_S = 10.0
LISTEN_BACKLOG = 2048
# Longer than a model server's: an event loop under a burst on few cores can lag by a second without being stuck.
API_SERVER_SILENCE_S = 3.0


class _Stopped(Exception):
    """A shutdown signal came while the service was starting."""


class StartupError(ValueError):
    """A process of the service could not start: the service does not either."""


@dataclass
class Child:
    """One supervised process, its status block (frames.status_block: heartbeat, ready, and its pid once it beats)
    and how to start it again."""

    kind: str  # "model server" | "API server"
    label: str
    status: np.ndarray
    silence_s: float  # how long its heartbeat may be silent once it beats
    restart: Callable[[], None] = lambda: None
    starting: ForkStart | None = None  # until the fork server has forked it
    process: ForkedProcess | None = None
    ready: bool = False
    failed_starts: int = 0
    not_before: float = 0.0  # no new start before this (backoff)

    @property
    def serving(self) -> bool:
        return self.status[frames.READY] == 1.0

    def reset_status(self) -> None:
        """A new process: not ready, no pid, and the start counting as its last heartbeat."""
        self.status[:] = 0.0
        self.status[frames.HEARTBEAT] = time.monotonic()

    def start(self, process: BaseProcess) -> None:
        """Start ``process`` as this child, without waiting for the fork server."""
        self.reset_status()
        self.process, self.ready = None, False
        self.starting = ForkStart(process)

    def forked(self) -> bool:
        """Whether its process has started; raises why its start failed (it has then no process)."""
        if self.starting is None:
            return self.process is not None
        if not self.starting.done():
            return False
        starting, self.starting = self.starting, None
        self.process = starting.result()
        return True


class Supervisor:
    def __init__(self, settings: Settings, api_servers: int, log_level: str | None = None):
        self.settings = settings
        self.api_server_count = api_servers
        self.log_level = log_level
        # the API servers' and model servers' modules imported once, in the fork server (service/fork_server.py)
        self.context = fork_server_context(SERVER_MODULES)
        self.lifeline = Lifeline(self.context)
        self.layout = RuntimeLayout(make_runtime_dir())
        self.listener: socket.socket | None = None
        self.models: dict[tuple[int, int], Child] = {}
        self.apis: dict[int, Child] = {}
        self.incoming = []
        self.heartbeat: np.ndarray | None = None  # the supervisor's own, read by every API server
        self._signal: int | None = None
        self._signals_forwarded = 0

    # the whole life ------------------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self._prepare()
            try:
                self._start_all()
            except _Stopped:
                return 0
            host, port = self.listener.getsockname()[:2]
            log.info(
                "serving on http://%s:%d with %d API servers and %d model servers",
                host,
                port,
                len(self.apis),
                len(self.models),
            )
            self._watch()
            return 0
        finally:
            self._stop_all()
            if self.listener is not None:
                self.listener.close()
            remove_runtime_dir(self.layout.root)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = sig
            return
        self._forward(sig)  # a second signal: the API servers skip their pre-stop period

    def _prepare(self) -> None:
        s = self.settings
        self.layout.metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.layout.metrics_dir)  # every child inherits it
        shared_state.create(self.layout.state_db)
        self.heartbeat = frames.status_block(self.layout.supervisor_status, create=True).numpy()
        self._beat()
        self.listener = bind(s.host, s.port)
        if s.grpc_port:
            check_free(s.host, s.grpc_port, "gRPC")
        for index in range(len(s.variants)):
            self.incoming.append(frames.incoming_block(self.layout.incoming(index), create=True).numpy())
            for replica in range(s.worker_replicas):
                status = frames.status_block(self.layout.status(index, replica), create=True).numpy()
                label = f"{s.variants[index].name}/{replica}"
                child = Child("model server", label, status, s.worker_heartbeat_timeout_s)
                child.restart = functools.partial(self._start_model, (index, replica), child, restarted=True)
                self.models[index, replica] = child
        for index in range(self.api_server_count):
            status = frames.status_block(self.layout.api_status(index), create=True).numpy()
            child = Child("API server", f"api-{index}", status, API_SERVER_SILENCE_S)
            child.restart = functools.partial(self._start_api, index, child)
            self.apis[index] = child

    def _start_all(self) -> None:
        """Every model server (loading in parallel), then every API server; any failure stops the service."""
        for key, child in self.models.items():
            self._start_model(key, child)
        self._wait_until_ready(self.models.values())
        for index, child in self.apis.items():
            self._start_api(index, child)
        self._wait_until_ready(self.apis.values())

    def _wait_until_ready(self, children) -> None:
        timeout = start_timeout_s(ExecutionOptions.from_settings(self.settings))  # model servers may capture graphs
        deadline = time.monotonic() + timeout
        waiting = list(children)
        while waiting:
            if self._signal is not None:
                raise _Stopped
            self._beat()
            for child in list(waiting):
                try:
                    if not child.forked():
                        continue
                except (OSError, EOFError) as error:
                    raise StartupError(f"the {child.kind} {child.label} could not be started: {error}") from None
                if child.serving:
                    child.ready = True
                    waiting.remove(child)
                elif not child.process.is_alive():
                    raise StartupError(
                        f"the {child.kind} {child.label} exited while starting (exit code {child.process.exitcode}); "
                        "its log above says why"
                    )
            if time.monotonic() > deadline:
                raise StartupError(f"{', '.join(c.label for c in waiting)} did not start in {timeout:g} s")
            time.sleep(WATCH_EVERY_S)

    # starting ------------------------------------------------------------------------------------------------
    def _start_model(self, key: tuple[int, int], child: Child, restarted: bool = False) -> None:
        threads = self.settings.torch_threads or max(1, len(os.sched_getaffinity(0)) - 1)
        spec = ModelServerSpec(self.settings, key[0], key[1], self.layout, threads, self.lifeline.end, restarted)
        child.start(self.context.Process(target=model_server.main, args=(spec,), name=f"bd:{child.label}"))

    def _start_api(self, index: int, child: Child) -> None:
        for block in self.incoming:
            block[index] = 0  # a lost predecessor's images are not coming
        spec = ApiServerSpec(self.settings, index, self.layout, self.lifeline.end, self.log_level)
        child.start(self.context.Process(target=api_server.main, args=(spec, self.listener), name=f"bd-{child.label}"))

    # watching ------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while self._signal is None:
            for child in [*self.models.values(), *self.apis.values()]:
                self._check(child)
            self._beat()
            time.sleep(WATCH_EVERY_S)

    def _beat(self) -> None:
        self.heartbeat[frames.HEARTBEAT] = time.monotonic()

    def _check(self, child: Child) -> None:
        try:
            if child.starting is not None and not child.forked():
                return  # the fork server has yet to fork it
        except ForkServerEnded:  # not the child's fault: started again at once, from a new fork server
            log.warning("the fork server did not fork %s %s; starting it again", child.kind, child.label)
            child.restart()
            return
        except Exception:  # any failure (the fork server gone: OSError, EOFError) is a failed start, tried again later
            log.exception("could not start %s %s", child.kind, child.label)
            self._replace(child)
            return
        process = child.process
        if process is None:  # waiting out a backoff
            if time.monotonic() >= child.not_before:
                child.restart()
            return
        if not child.ready and child.serving:
            child.ready, child.failed_starts = True, 0
            log.warning("%s %s is serving again", child.kind, child.label)
        silent = time.monotonic() - child.status[frames.HEARTBEAT]
        # until it beats (a new process imports torch and loads first), it has the start-up timeout
        beating = child.status[frames.PID] != 0
        limit = child.silence_s if beating else START_TIMEOUT_S
        if process.is_alive() and silent <= limit:
            return
        if process.is_alive():
            log.error(
                "%s %s (pid %s) sent no heartbeat for %.1f s; killing it", child.kind, child.label, process.pid, silent
            )
            process.kill()
            process.join(5)
        else:
            process.join(5)  # its exit code, from the fork server
            log.error("%s %s (pid %s) exited (code %s)", child.kind, child.label, process.pid, process.exitcode)
        child.status[frames.READY] = 0.0  # not ready from this moment, in every API server
        self._replace(child)

    def _replace(self, child: Child) -> None:
        """Start a lost process again at once if it had served, else after a growing backoff."""
        if child.ready:
            child.restart()
            return
        child.failed_starts += 1
        backoff = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (child.failed_starts - 1))
        log.error("%s %s failed before it served; next try in %.0f s", child.kind, child.label, backoff)
        child.process, child.not_before = None, time.monotonic() + backoff

    # stopping ------------------------------------------------------------------------------------------------
    def _forward(self, sig: int) -> None:
        for child in self.apis.values():
            if child.process is not None:
                child.process.send_signal(sig)

    def _stop_all(self) -> None:
        """API servers first (each drains: SIGTERM gives its pre-stop period), then the model servers."""
        sig = signal.SIGINT if self._signal == signal.SIGINT else signal.SIGTERM
        for child in [*self.models.values(), *self.apis.values()]:
            if child.starting is not None:  # a stopped fork server would never fork it: not waited for
                child.starting.abandon()
                with contextlib.suppress(OSError, EOFError):
                    child.process = child.starting.result()  # started after all: stopped with the others
                child.starting = None
        self._forward(sig)
        grace = self.settings.prestop_s + self.settings.request_timeout_s + STOP_GRACE_S
        _join_all([c.process for c in self.apis.values()], grace)
        models = [c.process for c in self.models.values()]
        for process in models:
            if process is not None:
                process.send_signal(signal.SIGTERM)
        _join_all(models, STOP_GRACE_S)


def _join_all(processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        if process is None:
            continue
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("%s did not stop in time; killing it", process.name)
            process.kill()
            process.join(5)


def bind(host: str, port: int) -> socket.socket:
    """The HTTP socket every API server accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with it on, a response's headers and body written apart wait for a delayed ACK (~40 ms)
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return listener


def check_free(host: str, port: int, what: str) -> None:
    """Refuse a port another program holds (the API servers bind it together, with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as error:
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {error.strerror}") from None


def serve_api_servers(settings: Settings, api_servers: int, log_level: str | None = None) -> int:
    """Serve ``settings`` with ``api_servers`` API server processes until a shutdown signal."""
    from service.request_log import configure_logging

    configure_logging(settings.log_format, log_level or settings.log_level)
    return Supervisor(settings, api_servers, log_level).run()


__all__ = ["StartupError", "Supervisor", "serve_api_servers"]
