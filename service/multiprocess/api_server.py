"""An API server: the service's HTTP (and gRPC) front on the socket its supervisor bound, with a data plane whose
executors are the model servers' clients. It tells its supervisor when it serves; it exits if the supervisor
goes away."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from service.config import Settings
from service.libc import name_process
from service.multiprocess.runtime import RuntimeLayout
from service.multiprocess.shared_memory import remove_runtime_dir

WATCH_EVERY_S = 0.2
NAME_ENV = "BLOCKDROP_API_SERVER_NAME"


@dataclass(frozen=True)
class ApiServerSpec:
    settings: Settings
    index: int
    layout: RuntimeLayout
    supervisor: int
    log_level: str | None = None

    @property
    def name(self) -> str:
        return f"api-{self.index}"


def main(spec: ApiServerSpec, listener: socket.socket, ready: Connection) -> None:
    """The process's entry point (spawned by the supervisor)."""
    os.setpgid(0, 0)  # signals come from the supervisor, not from a terminal's Ctrl-C to the whole group
    name_process(f"bd-{spec.name}")
    os.environ[NAME_ENV] = spec.name  # X-Served-By
    from service.app import create_app
    from service.multiprocess.backend import SharedBackend
    from service.request_log import configure_logging
    from service.server import DrainingServer, uvicorn_config

    settings = spec.settings
    configure_logging(settings.log_format, spec.log_level or settings.log_level)
    backend = SharedBackend(settings, spec.layout, spec.index)
    app = create_app(settings, backend=backend)
    server = DrainingServer(uvicorn_config(app, settings, spec.log_level), settings.prestop_s)
    watch = (server, ready, spec.supervisor, spec.layout)
    threading.Thread(target=_watch, args=watch, name="watch", daemon=True).start()
    server.run(sockets=[listener])
    if os.getppid() != spec.supervisor:  # drained after the supervisor was killed: nobody else will clean up
        remove_runtime_dir(spec.layout.root)


def _watch(server, ready: Connection, supervisor: int, layout: RuntimeLayout) -> None:
    """Say "ready" once uvicorn serves; end the process (and the runtime folder) if the supervisor was killed. (Not
    a parent-death signal: uvicorn re-raises the signal once it has drained, which would end the process before it
    could remove the folder.)"""
    told = False
    while True:
        if not told and server.started:
            with contextlib.suppress(OSError):  # the supervisor is gone: the next check ends this process
                ready.send("ready")
            told = True
        if os.getppid() != supervisor:
            remove_runtime_dir(layout.root)
            os._exit(0)
        time.sleep(0.05 if not told else WATCH_EVERY_S)
