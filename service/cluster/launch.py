"""``blockdrop serve --ray``: start (or join) a Ray cluster, deploy the service on it, serve until a signal."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
from ray import serve

from service.cluster import haproxy_shim, preflight, processes
from service.cluster.deployments import build_app
from service.cluster.serve_config import app_args, cluster_environment
from service.cluster.state import NAMESPACE
from service.config import Settings

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TOKEN_ENV = "BLOCKDROP_ADMIN_TOKEN"
HAPROXY_PREFIX = preflight.HAPROXY_PREFIX


class _Stop(Exception):
    """A stop signal arrived: leave whatever was running (a deploy included) and shut down."""


def deploy(settings: Settings, token_in_runtime_env: bool = False) -> None:
    """Deploy (or redeploy: Serve replaces the replicas a few at a time) the service on the connected cluster;
    returns once every deployment has a healthy replica. The admin token never goes into the deployments'
    arguments: a cluster this command started has it in its processes' environment; on a cluster it joined,
    ``token_in_runtime_env`` gives it to the ingress replicas as an environment variable of their runtime_env."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    environment = {TOKEN_ENV: settings.admin_token} if token_in_runtime_env and settings.admin_token else None
    serve.run(build_app(app_args(settings, portable=False), environment), name=settings.ray.app_name, route_prefix="/")


def undeploy(settings: Settings) -> None:
    """Remove the application and the state its replicas shared."""
    serve.delete(settings.ray.app_name)
    with contextlib.suppress(ValueError):  # never created
        ray.kill(ray.get_actor(f"{settings.ray.app_name}-state", namespace=NAMESPACE))


def haproxy_environment(directory: Path) -> dict[str, str]:
    """Ray's HAProxy files (config, admin socket, server state, metrics socket) in ``directory`` (private: 0700),
    and the shim as its binary: a script there that runs ``haproxy_shim.py`` with this Python."""
    shim = directory / "haproxy"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "{haproxy_shim.__file__}" "$@"\n')
    shim.chmod(0o700)
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(shim),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
    }


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while the cluster's processes start (they inherit it)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_cluster(settings: Settings, address: str | None = None, **init: object) -> Path | None:
    """Join the cluster at ``address``, or start one here whose processes get ``cluster_environment`` and the admin
    token in their environment (a cluster that runs already has its own: see docs/ray.md). Returns the private
    directory of the started cluster's HAProxy files (to remove once it stops)."""
    if address is not None:
        ray.init(address=address, log_to_driver=False, **init)
        return None
    preflight.check(settings)
    # mode 0700; short, as Ray puts the node id (56 characters) below it and HAProxy takes socket paths of at
    # most 97 characters
    directory = Path(tempfile.mkdtemp(prefix=HAPROXY_PREFIX, dir="/tmp"))
    environment = cluster_environment(settings)
    if settings.ray.haproxy:
        environment |= haproxy_environment(directory)
    if settings.admin_token:
        environment[TOKEN_ENV] = settings.admin_token
    with _environment(environment):
        ray.init(
            log_to_driver=False,
            include_dashboard=settings.ray.dashboard,
            dashboard_host=settings.host,
            dashboard_port=settings.ray.dashboard_port,
            **init,
        )
    return directory


def _raise_stop(*_: object) -> None:
    raise _Stop


def _in_thread(work: Callable[[], None], timeout_s: float, abandon: Callable[[], bool] = lambda: False) -> bool:
    """Run ``work`` for at most ``timeout_s``, or until ``abandon()`` (Ray's calls wait forever on a cluster half
    gone); whether it ended."""
    worker = threading.Thread(target=work, name="ray-shutdown", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline and not abandon():
        worker.join(0.2)
    return not worker.is_alive()


def _stop_gracefully(settings: Settings, local: bool, timeout_s: float, cluster: set[int]) -> bool:
    """Undeploy (and for a local cluster, shut it down) within ``timeout_s``; whether it finished. Undeploying is
    given up as soon as one of the ``cluster``'s own processes dies (a signal to the whole process group reached
    them too, and with the raylet gone nothing is left to stop in order)."""

    def remove() -> None:
        try:
            undeploy(settings)
        except Exception as error:  # the cluster half gone: what is left is stopped by the caller
            log.warning("removing the application failed: %s", error)

    def shut_down() -> None:
        serve.shutdown()
        ray.shutdown()

    if not _in_thread(remove, timeout_s, abandon=lambda: not all(processes.alive(pid) for pid in cluster)):
        return False
    return not local or _in_thread(shut_down, timeout_s)


def serve_on_ray(settings: Settings, address: str | None = None) -> bool:
    """Serve until a stop signal; whether this process's Ray driver is still sound. When the cluster could not be
    stopped in order (a signal to the whole process group killed its processes first) it is not: Ray's core worker
    keeps retrying a cluster that is gone, and tearing it down (``ray.shutdown`` or the interpreter's exit) can
    crash the process with a segfault, so the caller should end the process without that teardown."""
    address = address or settings.ray.address
    local = address is None
    _on_stop_signals(_raise_stop)
    if local:
        processes.become_subreaper()
    try:
        directory = start_cluster(settings, address)
    except preflight.StartRefused:
        raise  # nothing started
    except BaseException as error:  # a stop signal or a failure while Ray started: stop what it had started
        if local:
            processes.stop_descendants()
        if isinstance(error, _Stop):
            return True
        raise
    _on_stop_signals(_raise_stop)  # ray.init installs its own SIGTERM handler (sys.exit)
    cluster = processes.children(os.getpid())  # the GCS, the raylet, the dashboard, … (not Ray's workers)
    try:
        deploy(settings, token_in_runtime_env=not local)
        where = ray.get_runtime_context().gcs_address
        print(f"serving on http://{settings.host}:{settings.port} through Ray Serve (cluster {where})", flush=True)
        threading.Event().wait()
    except _Stop:
        pass
    finally:
        _on_stop_signals(signal.SIG_IGN)  # a second signal must not cut the shutdown short
        log.info("shutting down the Ray deployment")
        stopped = _stop_gracefully(settings, local, settings.request_timeout_s + 30, cluster)
        if not stopped:
            log.warning("the Ray cluster did not stop in order; stopping its processes")
        if local:
            processes.stop_descendants()
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
    return stopped


def _on_stop_signals(handler: object) -> None:
    for sig in STOP_SIGNALS:  # a terminal closing sends SIGHUP; a process manager, SIGTERM; Ctrl-C, SIGINT
        signal.signal(sig, handler)
