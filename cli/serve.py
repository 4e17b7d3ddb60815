"""``blockdrop serve``: the service with the settings from the environment (``BLOCKDROP_*``) and an optional
file; command-line options win over both. ``--ray`` runs the same service on a Ray cluster (the extra ``.[ray]``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli.help_format import DefaultsInHelp


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__, formatter_class=DefaultsInHelp)
    parser.add_argument("--host", help="bind address (default: BLOCKDROP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: BLOCKDROP_PORT or 8000)")
    parser.add_argument("--settings", help="TOML or JSON settings file (same as BLOCKDROP_SETTINGS_FILE)")
    parser.add_argument(
        "--api-servers",
        type=int,
        metavar="N",
        help="API server processes on the one port, before one model server per variant (default: "
        "BLOCKDROP_API_SERVERS, else one per four cores; 1: a single process)",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: BLOCKDROP_LOG_LEVEL or info"
    )
    ray = parser.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true", help="serve on a Ray cluster: one deployment per variant")
    ray.add_argument("--ray-address", help="join this cluster (default: the ray.address setting, else start one here)")
    ray.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="start Ray's dashboard on --host (port: the ray.dashboard_port setting), for `serve status`",
    )
    ray.add_argument(
        "--print-config",
        choices=["serve", "kuberay"],
        help="print the Ray Serve config (for `serve deploy`) or a KubeRay RayService manifest, and exit",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.config import SETTINGS_FILE_ENV, Settings, default_api_servers

    if args.settings:
        os.environ[SETTINGS_FILE_ENV] = args.settings
    given = {"host": args.host, "port": args.port, "api_servers": args.api_servers}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides)
    if args.ray_dashboard:
        settings = settings.model_copy(update={"ray": settings.ray.model_copy(update={"dashboard": True})})
    if args.print_config:
        from service.cluster.serve_config import rayservice_manifest, serve_config, to_yaml

        document = serve_config(settings) if args.print_config == "serve" else rayservice_manifest(settings)
        print(to_yaml(document), end="")
        return 0
    on_ray = bool(args.ray or args.ray_address)
    if not (on_ray and (args.ray_address or settings.ray.address)):  # a cluster elsewhere has its own GPUs and files
        _check_before_starting(settings, ports=not on_ray)  # (a cluster started here checks its ports itself)
    if on_ray:
        return _serve_on_ray(settings, args.ray_address, args.log_level)
    api_servers = settings.api_servers or default_api_servers(len(os.sched_getaffinity(0)))
    if api_servers > 1:
        from service.multiprocess.supervisor import serve_api_servers

        return serve_api_servers(settings, api_servers, args.log_level)
    from service.server import serve

    serve(settings, args.log_level)
    return 0


def _check_before_starting(settings, ports: bool) -> None:
    """A device this machine lacks, a bad artifact or (``ports``) a port taken, said in one line (``blockdrop serve:
    error: …``, exit 2) before any server starts, instead of a traceback from each process that would meet it."""
    from models.device import resolve_device
    from service.port_check import check_ports
    from service.variants import check_artifacts

    resolve_device(settings.device)
    check_artifacts(settings.variants)
    if ports:
        check_ports(
            [
                (settings.host, settings.port, "the service's port, --port"),
                (settings.host, settings.grpc_port, "gRPC, GRPC_PORT"),
            ]
        )


def _serve_on_ray(settings, address: str | None, log_level: str | None) -> int:
    try:
        from service.cluster.launch import serve_on_ray
    except ImportError as error:
        raise ValueError(f"--ray needs Ray Serve: pip install '.[ray]' ({error})") from None
    from service.request_log import configure_logging

    configure_logging(settings.log_format, log_level or settings.log_level)
    if not serve_on_ray(settings, address):
        # Everything it started is stopped; only Ray's driver state is broken, and its teardown can segfault.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
