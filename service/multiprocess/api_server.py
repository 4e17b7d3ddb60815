"""An API server: the service's HTTP (and gRPC) front on the socket its supervisor bound, with a data plane whose
executors are the model servers' clients. In its status block it tells its supervisor when it serves, and that
its event loop still runs (a heartbeat the loop itself writes: a stopped or stuck loop hangs every connection it
accepted, so the supervisor replaces it); it exits if the supervisor goes away."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import uvicorn

from service.config import Settings
from service.fork_server import service_gone
from service.libc import name_process
from service.multiprocess import frames
from service.multiprocess.runtime import RuntimeLayout
from service.multiprocess.shared_memory import remove_runtime_dir
from service.server import DrainingServer, uvicorn_config

WATCH_EVERY_S = 0.2
HEARTBEAT_EVERY_S = 0.1
NAME_ENV = "BLOCKDROP_API_SERVER_NAME"


@dataclass(frozen=True)
class ApiServerSpec:
    settings: Settings
    index: int
    layout: RuntimeLayout
    lifeline: Connection  # reads end-of-file once the supervisor is gone (service/fork_server.py)
    log_level: str | None = None

    @property
    def name(self) -> str:
        return f"api-{self.index}"


class BeatingServer(DrainingServer):
    """The draining uvicorn server, writing into ``status`` that it serves (in the loop iteration that starts
    accepting, so before it answers anyone) and, from a task in its event loop, the heartbeat."""

    def __init__(self, config: uvicorn.Config, prestop_s: float, status: np.ndarray) -> None:
        super().__init__(config, prestop_s)
        self.status = status

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        beat = asyncio.create_task(self._beat())
        try:
            await super().serve(sockets)
        finally:
            beat.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # from now on the supervisor holds it to API_SERVER_SILENCE_S (it beats: its pid is set)
            self.status[frames.READY] = 1.0
            self.status[frames.PID] = os.getpid()

    async def _beat(self) -> None:
        while True:
            self.status[frames.HEARTBEAT] = time.monotonic()
            await asyncio.sleep(HEARTBEAT_EVERY_S)


def main(spec: ApiServerSpec, listener: socket.socket) -> None:
    """The process's entry point (started by the supervisor)."""
    os.setpgid(0, 0)  # signals come from the supervisor, not from a terminal's Ctrl-C to the whole group
    name_process(f"bd-{spec.name}")
    os.environ[NAME_ENV] = spec.name  # X-Served-By
    from service.app import create_app
    from service.multiprocess.backend import SharedBackend
    from service.request_log import configure_logging

    settings = spec.settings
    configure_logging(settings.log_format, spec.log_level or settings.log_level)
    backend = SharedBackend(settings, spec.layout, spec.index)
    app = create_app(settings, backend=backend)
    status = frames.status_block(spec.layout.api_status(spec.index)).numpy()
    server = BeatingServer(uvicorn_config(app, settings, spec.log_level), settings.prestop_s, status)
    threading.Thread(target=_watch, args=(spec.lifeline, spec.layout), name="watch", daemon=True).start()
    server.run(sockets=[listener])
    if service_gone(spec.lifeline):  # drained after the supervisor was killed: nobody else will clean up
        remove_runtime_dir(spec.layout.root)


def _watch(lifeline: Connection, layout: RuntimeLayout) -> None:
    """End the process (and the runtime folder) if the supervisor was killed (it is not this process's parent:
    the fork server is, and that lives as long as any child does)."""
    while not service_gone(lifeline):
        time.sleep(WATCH_EVERY_S)
    remove_runtime_dir(layout.root)
    os._exit(0)
