"""Which variant serves a request: an explicit override, else a sticky hash of the client key, else a weighted draw.

The hash is sha256 of the key, so the same key lands on the same variant in every process and after restarts,
as long as the variants and weights are unchanged.
"""

from __future__ import annotations

import bisect
import hashlib
import random

from service.errors import NotFound


class Router:
    def __init__(
        self,
        weights: dict[str, float],
        shadow_variant: str | None = None,
        shadow_fraction: float = 0.0,
        rng: random.Random | None = None,
    ):
        self.names = list(weights)
        self._routable = [name for name in self.names if weights[name] > 0]
        total = sum(weights[name] for name in self._routable)
        running, self._edges = 0.0, []
        for name in self._routable:
            running += weights[name] / total
            self._edges.append(running)
        self._edges[-1] = 1.0
        self.shadow_variant = shadow_variant
        self.shadow_fraction = shadow_fraction
        self._rng = rng or random.Random()

    def choose(self, override: str | None = None, client_key: str | None = None) -> str:
        if override:
            if override not in self.names:
                raise NotFound(f"unknown variant {override!r}; known: {', '.join(self.names)}")
            return override
        point = stable_unit_interval(client_key) if client_key else self._rng.random()
        return self._routable[min(bisect.bisect_right(self._edges, point), len(self._routable) - 1)]

    def shadow_for(self, served: str) -> str | None:
        """The variant to shadow this request with, if it is sampled for shadowing."""
        if self.shadow_variant is None or self.shadow_variant == served:
            return None
        return self.shadow_variant if self._rng.random() < self.shadow_fraction else None


def stable_unit_interval(key: str) -> float:
    """Map ``key`` to [0, 1) with sha256: stable across processes, platforms and restarts."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
