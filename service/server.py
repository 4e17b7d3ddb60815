"""The HTTP server: uvicorn, configured for this service, with a shutdown that drains first."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn

from service.config import Settings


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
        http="httptools",
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but a shutdown signal first marks the service as draining: readiness turns 503 and new
    inference requests get 503 with Retry-After while the requests in flight complete."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        plane = getattr(self.config.app.state, "plane", None)
        if plane is not None:
            plane.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(settings: Settings, log_level: str | None = None) -> None:
    """Serve ``settings`` until a shutdown signal, then drain."""
    from service.app import create_app
    from service.request_log import configure_logging

    configure_logging(settings.log_format, log_level or settings.log_level)
    DrainingServer(uvicorn_config(create_app(settings), settings, log_level)).run()
