"""An API server's backend (``service.app.Backend``): executors that are clients of the model servers, the shared
prediction store, the metrics of every process, and a loop that applies the operator changes made through the
other API servers."""

from __future__ import annotations

import asyncio
import logging
import time

from service.config import Settings
from service.dataplane import DataPlane, Executor
from service.multiprocess import frames
from service.multiprocess.frames import SlotShape
from service.multiprocess.model_client import ModelClient, model_client
from service.multiprocess.runtime import RuntimeLayout
from service.multiprocess.shared_metrics import SharedMetrics
from service.multiprocess.shared_state import SharedChanges, SharedPredictionStore
from service.variants import Variant

log = logging.getLogger(__name__)

CHANGES_POLL_S = 0.2  # an operator's change reaches every API server within this (and a poll's time)
# the supervisor beats every 0.1 s; a start, a kill or a join in its watch takes well under a second
SUPERVISOR_SILENCE_S = 10.0


class SharedBackend:
    shares_ports = True  # every API server listens on the gRPC port too (SO_REUSEPORT)

    def __init__(self, settings: Settings, layout: RuntimeLayout, api_server: int):
        self.settings = settings
        self.layout = layout
        self.api_server = api_server
        self.metrics = SharedMetrics(layout.metrics_dir)
        self.store = SharedPredictionStore(layout.state_db, settings.feedback_capacity, settings.feedback_ttl_s)
        self.changes = SharedChanges(layout.state_db)
        self.clients: dict[str, ModelClient] = {}
        self.supervisor = frames.status_block(layout.supervisor_status).numpy()

    def liveness_problem(self) -> str | None:
        """Why this API server should not count as live: its supervisor, which replaces the service's lost
        processes, has stopped watching them (stopped, or stuck). None while it watches."""
        silent = time.monotonic() - float(self.supervisor[frames.HEARTBEAT])
        if silent > SUPERVISOR_SILENCE_S:
            return f"the supervisor has not watched the service's processes for {silent:.0f} s"
        return None

    def executors(self, variants: dict[str, Variant]) -> dict[str, Executor]:
        for index, configured in enumerate(self.settings.variants):
            variant = variants[configured.name]
            spec = variant.manifest.input
            shape = SlotShape(
                self.settings.queue_limit,
                (3, spec.height, spec.width),
                len(variant.manifest.classes),
                variant.num_blocks,
            )
            client = model_client(
                self.layout, index, variant.name, shape, self.settings.worker_replicas, self.api_server, self.settings
            )
            links = client.links
            self.metrics.worker_up.labels(variant.name).set_function(lambda ls=links: float(sum(x.alive for x in ls)))
            self.clients[variant.name] = client
        return dict(self.clients)

    async def run(self, plane: DataPlane) -> None:
        """Apply the changes made before this API server started, then every new one, until cancelled."""
        plane.on_update = self.changes.publish
        seen = -1
        while True:
            try:
                version = self.changes.version()
                if version != seen:
                    plane.apply_changes(self.changes.current())
                    seen = version
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked database for longer than its timeout: next time
                log.exception("reading the operators' changes failed")
            await asyncio.sleep(CHANGES_POLL_S)
