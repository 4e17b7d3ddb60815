"""Recent predictions, kept so that ``POST /v1/feedback`` can say whether a served prediction was right.

Bounded in count (oldest evicted first) and in age; each prediction takes feedback once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple


class ServedPrediction(NamedTuple):
    """A tuple of plain values, which the garbage collector stops tracking: a full store costs no collection."""

    variant: str
    class_id: int
    served_at: float


class PredictionStore:
    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, ServedPrediction] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, request_id: str, variant: str, class_id: int) -> None:
        self._items[request_id] = ServedPrediction(variant, class_id, self._clock())
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, request_id: str) -> ServedPrediction | None:
        """The prediction served under ``request_id``; None if unknown, already taken or older than the TTL."""
        self._evict_expired()
        return self._items.get(request_id)

    def take(self, request_id: str) -> None:
        """Mark the prediction as answered: it takes feedback once."""
        self._items.pop(request_id, None)

    def add_all(self, entries: list[tuple[str, str, int]]) -> None:
        for request_id, variant, class_id in entries:
            self.add(request_id, variant, class_id)

    def pop(self, request_id: str) -> ServedPrediction | None:
        """The prediction served under ``request_id``, taken so that it gets feedback once; None if unknown,
        already taken or expired."""
        served = self.get(request_id)
        if served is not None:
            self.take(request_id)
        return served

    # The data plane's interface, which a store shared between service replicas answers remotely.

    async def remember(self, entries: list[tuple[str, str, int]]) -> None:
        """Keep ``(request_id, variant, class_id)`` of each image served."""
        self.add_all(entries)

    async def claim(self, request_id: str) -> ServedPrediction | None:
        return self.pop(request_id)

    def _evict_expired(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._items:
            oldest = next(iter(self._items.values()))
            if oldest.served_at > cutoff:
                break
            self._items.popitem(last=False)
