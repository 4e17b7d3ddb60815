"""The Ray Serve application: an ingress deployment carrying the service's FastAPI app, and one deployment per
variant holding that variant's model and micro-batcher.

``app_builder(args)`` is the import path a Serve config names (``service.cluster.deployments:app_builder``);
``args`` are the service settings, as ``blockdrop serve --ray --print-config`` writes them. Every replica builds
its ``Settings`` from them and from its own ``BLOCKDROP_*`` environment (secrets such as the admin token stay out
of the config), so the service behaves exactly as a single process given the same settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import torch
from anyio import to_thread
from prometheus_client import generate_latest
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from models.device import resolve_device
from service.batching import MicroBatcher
from service.cluster.guard import check_packages
from service.cluster.merge import merge_families, parse_exposition
from service.cluster.remote import RemoteVariant
from service.cluster.serve_config import ingress_deployment, variant_deployment
from service.cluster.state import SharedStore, shared_state
from service.config import Settings
from service.dataplane import DataPlane, Executor
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.variants import ExecutionOptions, Variant, load_variant

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0


def settings_from(args: dict[str, Any]) -> Settings:
    """The service settings a replica runs with: ``args`` (the config's), then its environment."""
    return Settings(**args)


def fingerprint(args: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:16]


def set_threads(count: int) -> None:
    """Ray sets OMP_NUM_THREADS from an actor's CPUs (1 for a fraction); the settings say how many to use."""
    torch.set_num_threads(count)


class VariantModel:
    """One variant's model and micro-batcher; every call is one image, and calls that arrive together share a
    batch. Errors are the service's own (overloaded, deadline passed), raised back to the ingress."""

    def __init__(self, args: dict[str, Any], name: str):
        check_packages()
        settings = settings_from(args)
        variant_settings = next(v for v in settings.variants if v.name == name)
        set_threads(variant_settings.ray.torch_threads)
        device = str(resolve_device(settings.device))
        self.variant = load_variant(
            variant_settings,
            device,
            fold_batchnorm=settings.fold_batchnorm,
            execution=ExecutionOptions.from_settings(settings),
        )
        spec = self.variant.manifest.input
        for n in sorted({1, settings.max_batch_size}):  # warm: the first requests are not slow
            self.variant.infer(torch.zeros(n, 3, spec.height, spec.width))
        self._batches: list[tuple[int, float]] = []
        self._lock = threading.Lock()
        self.batcher = MicroBatcher(
            name,
            self.variant.infer,
            settings.max_batch_size,
            settings.max_batch_wait_ms / 1000,
            settings.queue_limit,
            settings.retry_after_s,
            on_batch=self._note_batch,
        )
        self.batcher.start()

    def _note_batch(self, result: Any, seconds: float) -> None:
        with self._lock:
            self._batches.append((len(result.flops), seconds))

    async def infer(
        self, images: np.ndarray, thresholds: list[float | None], seconds_left: float
    ) -> list[dict[str, Any]]:
        """``images`` [N, 3, H, W] as one ingress sent them together; one answer per image: its result, or the
        service error that refused it (a full queue, a passed deadline) while the others may have run."""
        deadline = time.monotonic() + seconds_left
        futures = [
            self.batcher.submit(torch.from_numpy(image), deadline, threshold)
            for image, threshold in zip(images, thresholds)
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        with self._lock:  # the batch figures since the last answer ride along, each batch reported once
            batches, self._batches = self._batches, []
        answers = [_answer(result) for result in results]
        answers[0]["batches"] = batches
        return answers

    def ping(self) -> dict[str, Any]:
        """Alive, and how this replica runs its model (for /v1/models: a failed capture runs without graphs)."""
        return {"cuda_graphs": self.variant.cuda_graphs}

    def check_health(self) -> None:
        """Ray's periodic health check: a batcher whose thread died makes the replica be replaced."""
        if not all(thread.is_alive() for thread in self.batcher._threads):
            raise RuntimeError(f"the micro-batcher of variant {self.variant.name!r} stopped")

    def __del__(self) -> None:
        self.batcher.stop(5.0)


def _answer(result: Any) -> dict[str, Any]:
    if isinstance(result, ServiceError):
        return {"error": {"status": result.status_code, "message": result.message}}
    if isinstance(result, BaseException):
        raise result
    return {
        "logits": result.logits.numpy(),
        "keep_mask": result.keep_mask.numpy(),
        "flops": result.flops,
        "inference_seconds": result.inference_seconds,
        "batch_size": result.batch_size,
    }


class ClusterMetrics(ServiceMetrics):
    """This replica's metrics, reported together with the other ingress replicas' (from the state actor)."""

    def __init__(self) -> None:
        super().__init__()
        self.live_others: list[list] = []
        self.quiet_others: list[list] = []

    def collect(self):
        return merge_families([list(self.registry.collect()), *self.live_others], self.quiet_others)

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


class RayBackend:
    """The data plane's backend on Ray: remote executors, the shared store, and the background loop that shares
    metrics and operator changes between ingress replicas and pings the variants' deployments."""

    names_its_servers = True  # the ingress adds X-Served-By with its replica's id

    def __init__(self, settings: Settings, args: dict[str, Any], handles: dict[str, DeploymentHandle], replica: str):
        self.settings = settings
        self.handles = handles
        self.replica = replica
        self.fingerprint = fingerprint(args)
        self.metrics = ClusterMetrics()
        self.state = shared_state(settings.ray.app_name, settings.feedback_capacity, settings.feedback_ttl_s)
        self.store = SharedStore(self.state)
        self.remotes: dict[str, RemoteVariant] = {}
        self._version = -1

    def executors(self, variants: dict[str, Variant]) -> dict[str, Executor]:
        for name, variant in variants.items():
            retry_after = self.settings.retry_after_s
            remote = RemoteVariant(
                name, self.handles[name], self.metrics, variant.full_flops, retry_after, self.settings.max_batch_size
            )
            self.metrics.worker_up.labels(name).set_function(lambda r=remote: float(r.alive))
            self.remotes[name] = remote
        return dict(self.remotes)

    async def run(self, plane: DataPlane) -> None:
        plane.on_update = self._publish
        interval = self.settings.ray.sync_interval_s
        while True:
            try:
                await asyncio.gather(*(remote.ping(PING_TIMEOUT_S) for remote in self.remotes.values()))
                await self._count_replicas()
                await self._sync(plane, interval)
            except asyncio.CancelledError:
                raise
            except Exception:  # the state actor restarting: try again next time
                log.exception("sharing state with the other ingress replicas failed")
            await asyncio.sleep(interval)

    async def _count_replicas(self) -> None:
        """How many replicas of each variant Ray's controller reports running (a blocking call: in a thread)."""
        status = await to_thread.run_sync(serve.status)
        application = status.applications.get(self.settings.ray.app_name)
        for name, remote in self.remotes.items():
            deployment = application.deployments.get(f"variant-{name}") if application else None
            if deployment is None:  # being deployed or removed: not known
                remote.running_replicas = None
                continue
            states = deployment.replica_states.items()
            remote.running_replicas = sum(count for state, count in states if str(state).endswith("RUNNING"))

    async def _sync(self, plane: DataPlane, interval: float) -> None:
        live, quiet, version, changes = await self.state.sync.remote(
            self.replica, self.metrics.exposition(), self.fingerprint, 3 * interval
        )
        self.metrics.live_others = await to_thread.run_sync(lambda: [parse_exposition(t) for t in live])
        self.metrics.quiet_others = await to_thread.run_sync(lambda: [parse_exposition(t) for t in quiet])
        if version != self._version:
            plane.apply_changes(changes)
            self._version = version

    def _publish(self, name: str, change: dict[str, float]) -> None:
        self.state.publish.remote(self.fingerprint, name, change)  # the actor runs it; nobody waits


@serve.ingress()
class Ingress:
    """The service's FastAPI app, as in a single process, with its variants' models in their deployments."""

    def __init__(self, args: dict[str, Any], handles: dict[str, DeploymentHandle]):
        check_packages()
        self.args = args
        self.handles = handles
        self.settings = settings_from(args).model_copy(update={"grpc_port": 0, "inference_workers": "thread"})
        set_threads(1)  # the ingress only decodes images and routes; the models run in their deployments
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from service.api.body_bounds import BodyBounds
        from service.app import create_app
        from service.cluster.headers import ServedBy

        backend = RayBackend(self.settings, self.args, self.handles, self.replica)
        app = create_app(self.settings, backend=backend)
        app.add_middleware(ServedBy, replica=self.replica)
        # Ray's uvicorn bounds neither a body's time nor the bodies' memory (in one process, http_protocol does)
        app.add_middleware(
            BodyBounds,
            timeout_s=self.settings.body_timeout_s,
            budget_bytes=self.settings.body_memory_bytes,
            retry_after_s=self.settings.retry_after_s,
        )
        return app


def build_app(args: dict[str, Any], ingress_environment: dict[str, str] | None = None) -> Application:
    """The application for ``args``; ``ingress_environment`` goes into the ingress replicas' runtime_env."""
    settings = settings_from(args)
    variants = {
        v.name: serve.deployment(VariantModel).options(**variant_deployment(v, settings)).bind(args, v.name)
        for v in settings.variants
    }
    ingress = ingress_deployment(settings)
    if ingress_environment:
        ingress["ray_actor_options"]["runtime_env"] = {"env_vars": ingress_environment}
    return serve.deployment(Ingress).options(**ingress).bind(args, variants)


def app_builder(args: dict[str, Any]) -> Application:
    """What a Serve config's ``import_path`` names."""
    return build_app(args)
