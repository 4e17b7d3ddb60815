"""The HTTP server: uvicorn, configured for this service, with a shutdown that drains first."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.config import Settings
from service.http_protocol import bounded_protocol

log = logging.getLogger(__name__)


def uvicorn_config(app: Callable, settings: Settings, log_level: str | None = None) -> uvicorn.Config:
    """httptools parses HTTP in C (h11, pure Python, costs the event loop far more per request). The loop is
    asyncio's, not uvloop: under overload (``blockdrop bench soak``, bursts of 256 connections) uvloop left some
    connections unanswered for over 10 s while others were served many times over; asyncio's loop did not."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level or settings.log_level,
        log_config=None,  # uvicorn's loggers go through the service's handler (service/request_log.py)
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.request_timeout_s,
        loop="asyncio",
        # httptools, with bounds on headers and bodies
        http=bounded_protocol(
            settings.max_header_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.body_memory_bytes,
            settings.retry_after_s,
            refusal_counter(app),
        ),
    )


def refusal_counter(app: Callable) -> Callable[[int], None] | None:
    """Counts what the HTTP server answers before the app (a 400, 408, 431 or 503) in the app's metrics."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is None:
        return None
    return lambda status: metrics.http_refusals.labels(str(status)).inc()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, stopping in two steps a load balancer can follow. On SIGTERM, readiness turns 503 while
    every request is still served, for ``prestop_s`` (the time a balancer needs to notice); then the service drains:
    new inference requests get 503 with Retry-After while those in flight complete, and uvicorn stops. SIGINT (a
    person at a terminal) and a second signal skip the pre-stop period."""

    def __init__(self, config: uvicorn.Config, prestop_s: float = 0.0):
        super().__init__(config)
        self.prestop_s = prestop_s
        self._prestop: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        plane = getattr(self.config.app.state, "plane", None)
        if sig == signal.SIGTERM and self.prestop_s > 0 and self._prestop is None and plane is not None:
            plane.stop_being_ready()
            log.info("SIGTERM: not ready; serving %.1f s more before draining", self.prestop_s)
            self._prestop = threading.Timer(self.prestop_s, self._drain, (sig, frame))
            self._prestop.daemon = True
            self._prestop.start()
            return
        if self._prestop is not None:
            self._prestop.cancel()
        self._drain(sig, frame)

    def _drain(self, sig: int, frame: FrameType | None) -> None:
        plane = getattr(self.config.app.state, "plane", None)
        if plane is not None:
            plane.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(settings: Settings, log_level: str | None = None) -> None:
    """Serve ``settings`` until a shutdown signal, then drain."""
    from service.app import create_app
    from service.request_log import configure_logging

    configure_logging(settings.log_format, log_level or settings.log_level)
    DrainingServer(uvicorn_config(create_app(settings), settings, log_level), settings.prestop_s).run()
