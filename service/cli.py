"""``blockdrop serve``: uvicorn with the settings from the environment (``BLOCKDROP_*``) and an optional file."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.config import SETTINGS_FILE_ENV, Settings


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__)
    parser.add_argument("--host", help="bind address (default: BLOCKDROP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: BLOCKDROP_PORT or 8000)")
    parser.add_argument("--settings", help=f"TOML or JSON settings file (same as {SETTINGS_FILE_ENV})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    from service.app import create_app

    if args.settings:
        os.environ[SETTINGS_FILE_ENV] = args.settings
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    DrainingServer(uvicorn_config(create_app(settings), settings, args.log_level)).run()
    return 0


def uvicorn_config(app: Callable, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """httptools parses HTTP in C (h11, pure Python, costs the event loop far more per request). The loop is
    asyncio's, not uvloop: under overload (``blockdrop bench soak``, bursts of 256 connections) uvloop left some
    connections unanswered for over 10 s (260 wrk timeouts in 5 minutes) while others were served many times
    over; on asyncio's loop the same soak had none."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
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
