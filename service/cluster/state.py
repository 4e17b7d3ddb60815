"""What the ingress replicas of one deployment share, in one named Ray actor: the predictions awaiting feedback
(feedback posted to any replica finds its prediction), each replica's metrics (so that any replica reports the
whole service) and the operator's runtime changes (a PUT on one replica reaches them all).

The actor is detached and named after the application, so it outlives a redeploy: counters keep counting and a
client's feedback still finds a prediction served before the update. Operator changes are kept per settings
fingerprint, so that a redeploy with new settings starts from those settings, not from an older runtime change.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from service.feedback import PredictionStore, ServedPrediction

NAMESPACE = "blockdrop"


@ray.remote(num_cpus=0, max_restarts=-1)
class SharedState:
    def __init__(self, capacity: int, ttl_s: float):
        self.store = PredictionStore(capacity, ttl_s, clock=time.time)
        self.reports: dict[str, tuple[float, str]] = {}  # replica -> (when, its metrics as exposition text)
        self.changes: dict[str, dict[str, dict[str, Any]]] = {}  # settings fingerprint -> variant -> change
        self.version = 0

    def remember(self, entries: list[tuple[str, str, int]]) -> None:
        self.store.add_all(entries)

    def claim(self, request_id: str) -> tuple[str, int, float] | None:
        served = self.store.pop(request_id)
        return None if served is None else tuple(served)

    def publish(self, fingerprint: str, variant: str, change: dict[str, Any]) -> int:
        self.changes.setdefault(fingerprint, {}).setdefault(variant, {}).update(change)
        self.version += 1
        return self.version

    def sync(
        self, replica: str, exposition: str, fingerprint: str, live_within_s: float
    ) -> tuple[list[str], list[str], int, dict[str, dict[str, Any]]]:
        """Take ``replica``'s metrics; give back the other replicas' (those heard from within ``live_within_s``,
        then the quiet ones), and the operator changes made under these settings."""
        now = time.time()
        self.reports[replica] = (now, exposition)
        live = [text for name, (when, text) in self.reports.items() if name != replica and now - when <= live_within_s]
        quiet = [text for name, (when, text) in self.reports.items() if name != replica and now - when > live_within_s]
        return live, quiet, self.version, self.changes.get(fingerprint, {})


def shared_state(app_name: str, capacity: int, ttl_s: float) -> ray.actor.ActorHandle:
    """The application's state actor, created by whichever replica asks first."""
    return SharedState.options(
        name=f"{app_name}-state", namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(capacity, ttl_s)


class SharedStore:
    """The data plane's prediction store, kept in the state actor. Every request that classifies awaits the
    actor before it answers, so feedback can never arrive first; the requests of one moment share one call."""

    def __init__(self, actor: ray.actor.ActorHandle):
        self._actor = actor
        self._pending: list[tuple[str, str, int]] = []
        self._flushed: asyncio.Future | None = None
        self._sending: set[asyncio.Task] = set()

    async def remember(self, entries: list[tuple[str, str, int]]) -> None:
        self._pending.extend(entries)
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)
        await asyncio.shield(self._flushed)

    def _flush(self) -> None:
        entries, self._pending = self._pending, []
        flushed, self._flushed = self._flushed, None
        sent = asyncio.ensure_future(self._send(entries))
        self._sending.add(sent)  # held until done: the loop keeps only a weak reference to a task
        sent.add_done_callback(self._sending.discard)
        sent.add_done_callback(lambda task: _settle(flushed, task))

    async def _send(self, entries: list[tuple[str, str, int]]) -> None:
        await self._actor.remember.remote(entries)

    async def claim(self, request_id: str) -> ServedPrediction | None:
        served = await self._actor.claim.remote(request_id)
        return None if served is None else ServedPrediction(*served)


def _settle(future: asyncio.Future, task: asyncio.Task) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(None)
