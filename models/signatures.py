"""Which signatures keep a whole-backbone CUDA graph (``models.engine``): a bounded cache that admits by frequency.

A signature (batch bucket and each block's kind; at batch 1, the mask itself) is worth a graph only if it comes
back, and capturing one costs the batch that triggers it the capture's time. Masks are skewed but long-tailed: the
shipped ResNet-110 policy draws 1,970 distinct masks on the 10,000 CIFAR-10 test images. Admitting every signature
seen twice and dropping the least recently used keeps replacing common masks with passing ones; admitting one only
while there is room, or in place of a kept one seen less often, keeps the common ones: at batch 1 and 64 entries,
32.0 % of the test images replay a graph instead of 19.5 %, after 194 captures instead of 6,076
(``blockdrop bench signatures``: bench/results/signatures.md). Sightings are counted for at most
``100 x capacity`` signatures; past that every count is halved and those that reach zero are forgotten, so the
counts follow a drifting mix.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

Graph = TypeVar("Graph")


class SignatureCache(Generic[Graph]):
    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._entries: dict[tuple, Graph] = {}
        self._seen: Counter[tuple] = Counter()
        self.lookups = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def get(self, key: tuple) -> Graph | None:
        """The graph kept for ``key``, or None; either way one more sighting of it."""
        self.lookups += 1
        self._seen[key] += 1
        if len(self._seen) > 100 * max(self.capacity, 1):
            self._age()
        graph = self._entries.get(key)
        if graph is not None:
            self.hits += 1
        return graph

    def wants(self, key: tuple) -> bool:
        """Whether a graph for ``key`` (just missed) would be kept: seen twice or more, and there is room or a kept
        signature has been seen less often."""
        count = self._seen[key]
        if key in self._entries or count < 2 or self.capacity < 1:
            return False
        return len(self._entries) < self.capacity or count > self._seen[self._least_seen()]

    def put(self, key: tuple, graph: Graph) -> None:
        """Keep ``graph`` for ``key``, dropping the least seen signature if the cache is full."""
        while self._entries and len(self._entries) >= self.capacity:
            del self._entries[self._least_seen()]
        if self.capacity > 0:
            self._entries[key] = graph

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._entries) > capacity:
            del self._entries[self._least_seen()]

    def clear(self) -> None:
        self._entries.clear()
        self._seen.clear()

    def _least_seen(self) -> tuple:
        return min(self._entries, key=self._seen.__getitem__)

    def _age(self) -> None:
        halved = {key: count // 2 for key, count in self._seen.items()}
        self._seen = Counter({key: count for key, count in halved.items() if count > 0 or key in self._entries})
