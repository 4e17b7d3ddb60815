"""``blockdrop serve --ray``: start (or join) a Ray cluster, deploy the service on it, serve until a signal."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import ray
from ray import serve

from service.cluster.deployments import build_app
from service.cluster.serve_config import app_args, cluster_environment
from service.cluster.state import NAMESPACE
from service.config import Settings

log = logging.getLogger(__name__)


def deploy(settings: Settings) -> None:
    """Deploy (or redeploy: Serve replaces the replicas a few at a time) the service on the connected cluster;
    returns once every deployment has a healthy replica."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(app_args(settings, portable=False)), name=settings.ray.app_name, route_prefix="/")


def undeploy(settings: Settings) -> None:
    """Remove the application and the state its replicas shared."""
    serve.delete(settings.ray.app_name)
    with contextlib.suppress(ValueError):  # never created
        ray.kill(ray.get_actor(f"{settings.ray.app_name}-state", namespace=NAMESPACE))


def start_cluster(settings: Settings, address: str | None = None, **init: object) -> None:
    """Join the cluster at ``address``, or start one here whose processes get ``cluster_environment`` (a cluster
    that runs already has its own: see docs/ray.md)."""
    if address is None:
        os.environ.update(cluster_environment(settings))
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **init)


def serve_on_ray(settings: Settings, address: str | None = None) -> None:
    address = address or settings.ray.address
    start_cluster(settings, address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deploy(settings)
        cluster = ray.get_runtime_context().gcs_address
        print(f"serving on http://{settings.host}:{settings.port} through Ray Serve (cluster {cluster})", flush=True)
        stop.wait()
    finally:
        log.info("shutting down the Ray deployment")
        undeploy(settings)
        if address is None:  # the cluster this command started
            serve.shutdown()
            ray.shutdown()
