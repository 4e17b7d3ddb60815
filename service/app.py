"""``create_app(settings)``: the FastAPI application, its lifecycle and its middleware."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import torch
from anyio import to_thread
from fastapi import FastAPI

from models.device import resolve_device
from service import __version__
from service.accounting import served_by
from service.api import admin, console, experiment, explain, health, rollouts, samples, v1, v2
from service.api.errors import install_error_handlers
from service.api.fast_classify import FastClassify
from service.api.middleware import BodySizeLimit, HeadAsGet, IdentityBodiesOnly, NoWebSockets, RequestMetrics
from service.config import Settings
from service.dataplane import DataPlane, Executor, Store
from service.experiment import RequestRate
from service.heap_keeper import keep_heap_trimmed
from service.local_backend import LocalBackend
from service.metrics import ServiceMetrics
from service.rollout_driver import RolloutDriver
from service.rollout_store import RolloutStore
from service.variants import ExecutionOptions, Variant, load_variant

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Where the models run (on this machine: service/local_backend.py; in model servers behind several API
    servers: service/multiprocess; on a Ray cluster: service/cluster), and what the service's replicas share: the
    metrics they report together, the predictions awaiting feedback."""

    metrics: ServiceMetrics
    store: Store

    def executors(self, variants: dict[str, Variant]) -> dict[str, Executor]: ...

    async def run(self, plane: DataPlane) -> None:
        """Background work while the service runs (cancelled at shutdown)."""


def cpu_inference_threads() -> int:
    """All cores but one: the event loop (HTTP, image decoding) keeps a core of its own, because torch's
    intra-op threads spinning on every core starve it and make small-batch inference slower, not faster."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def freeze_startup_objects() -> None:
    """Move everything made at start (models, settings, routes) out of the garbage collector's sight: they live as
    long as the process, and a full collection that walks them all stalls the event loop long enough to show in
    the tail latency under load (``blockdrop bench efficiency`` reports p99 against p50)."""
    gc.collect()
    gc.freeze()


def load_dataplane(settings: Settings, backend: Backend) -> DataPlane:
    """Load every variant (fails fast, naming the variant, if an artifact is bad), and take the backend's executors
    for them. Unless the backend runs them in this process, the models loaded here only describe the variants
    (manifests, shapes)."""
    device = str(resolve_device(settings.device))
    threads = settings.torch_threads or (cpu_inference_threads() if device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    execution = ExecutionOptions.from_settings(settings)
    # with worker processes (or model servers, or Ray) this process only describes the variants: no CUDA graphs here
    capture = getattr(backend, "runs_models_here", False)
    variants = {
        v.name: load_variant(v, device, fold_batchnorm=settings.fold_batchnorm, execution=execution, capture=capture)
        for v in settings.variants
    }
    liveness = getattr(backend, "liveness_problem", None)  # only the API servers' backend (service/multiprocess)
    return DataPlane(settings, variants, backend.metrics, backend.executors(variants), backend.store, liveness)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The service over ``backend`` (default: the models on this machine, ``LocalBackend``)."""
    settings = settings or Settings()
    backend = backend if backend is not None else LocalBackend(settings)
    local = backend if isinstance(backend, LocalBackend) else None  # its worker processes start and stop here
    metrics = backend.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if local is not None:
            local.prepare()
        plane = await to_thread.run_sync(load_dataplane, settings, backend)
        app.state.plane = plane
        if local is not None:
            await to_thread.run_sync(local.start_workers)
        plane.start()
        if settings.warmup and local is not None:
            await to_thread.run_sync(local.warm_up)
        plane.warmed_up = True
        grpc_server = None
        if settings.grpc_port:
            from service.api.grpc_v2 import start_grpc

            share_port = getattr(backend, "shares_ports", False)  # API servers of one service (multiprocess)
            grpc_server = await start_grpc(plane, metrics, settings, share_port)
        app.state.rollouts = RolloutDriver(plane, RolloutStore(settings.state_dir), settings.rollout_interval_s)
        await app.state.rollouts.restore()  # before the backend applies the changes other processes shared
        background = asyncio.create_task(backend.run(plane))
        # every process (each ingress replica on Ray) drives the rollouts in the shared store with its own counts
        controller = asyncio.create_task(app.state.rollouts.run())
        heap = asyncio.create_task(keep_heap_trimmed())  # what gRPC frees goes back too (service/heap_keeper.py)
        freeze_startup_objects()
        devices = sorted({str(variant.device) for variant in plane.variants.values()})  # DEVICE=auto resolved
        log.info("serving variants %s on %s", ", ".join(plane.variants), ", ".join(devices))
        yield
        for task in (background, controller, heap):
            task.cancel()
        plane.begin_shutdown()  # gRPC calls from here on are refused (UNAVAILABLE); those in flight finish
        if grpc_server is not None:
            await grpc_server.stop(grace=settings.request_timeout_s)
        await plane.stop()
        if local is not None:
            await local.stop_workers()

    app = FastAPI(
        title="BlockDrop serving",
        version=__version__,
        description="Dynamic-inference ResNets: per-image block dropping, with static variants to A/B test against.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.metrics = metrics  # (the HTTP server counts its own refusals there too: service/server.py)
    app.state.request_rate = RequestRate()  # the snapshots behind /v1/experiment's requests/s
    install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(explain.router)
    app.include_router(experiment.router)
    app.include_router(samples.router)
    app.include_router(admin.router)
    app.include_router(rollouts.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(console.router)
    console.mount_console_assets(app)
    # X-Served-By on every answer, read now, in the process that serves; a backend whose processes name themselves
    # (a Ray ingress adds its replica's id: service/cluster/headers.py) leaves it to them
    name = served_by() if not getattr(backend, "names_its_servers", False) else None
    app.add_middleware(HeadAsGet, routes=app.router.routes)  # innermost: the others see the HEAD
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(IdentityBodiesOnly)
    # outside the size limit, so that a 413 is counted too
    app.add_middleware(RequestMetrics, metrics=metrics, served_by=name)
    app.add_middleware(NoWebSockets, served_by=name)
    if settings.fast_path:  # added last, so it sees each request first
        app.add_middleware(
            FastClassify,
            plane=lambda: app.state.plane,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
            served_by=name,
        )
    return app
