"""``blockdrop serve``: the service with the settings from the environment (``BLOCKDROP_*``) and an optional
file; command-line options win over both."""

from __future__ import annotations

import argparse
import os

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    parser.add_argument("--host", help="bind address (default: BLOCKDROP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: BLOCKDROP_PORT or 8000)")
    parser.add_argument("--settings", help="TOML or JSON settings file (same as BLOCKDROP_SETTINGS_FILE)")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: BLOCKDROP_LOG_LEVEL or info"
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.config import SETTINGS_FILE_ENV, Settings
    from service.server import serve

    if args.settings:
        os.environ[SETTINGS_FILE_ENV] = args.settings
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = Settings(**overrides)
    serve(settings, args.log_level)
    return 0
