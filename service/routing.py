"""Which variant serves a request: an explicit override, else a sticky hash of the client key, else a weighted draw.

A client key goes to the variant with the lowest ``-ln(u(key, variant)) / weight``, where ``u`` is a sha256 of key
and variant mapped to (0, 1) (weighted rendezvous hashing): the same key lands on the same variant in every process
and after restarts, each variant gets its weight's share of the keys, and when one variant's weight grows it takes
keys from the others without any key moving between the others (and the reverse when it shrinks), so ramping a
variant up does not flip sticky users back and forth.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Collection

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
        self.set_weights(weights)
        self.shadow_variant = shadow_variant
        self.shadow_fraction = shadow_fraction
        self._rng = rng or random.Random()

    def set_weights(self, weights: dict[str, float]) -> None:
        """New traffic weights (every variant's); at least one must be positive. Takes effect at once."""
        if not all(math.isfinite(weight) and weight >= 0 for weight in weights.values()):
            raise ValueError("weights must be finite and not negative")
        routable = [name for name in self.names if weights.get(name, 0) > 0]
        if not routable:
            raise ValueError("at least one variant needs a positive weight")
        total = sum(weights[name] for name in routable)
        running, edges = 0.0, []
        for name in routable:
            running += weights[name] / total
            edges.append(running)
        edges[-1] = 1.0
        # swapped in one assignment, so a request never sees half of an update
        self._state = ({name: float(weights.get(name, 0)) for name in self.names}, routable, edges)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._state[0])

    def choose(
        self, override: str | None = None, client_key: str | None = None, unavailable: Collection[str] = ()
    ) -> str:
        """The variant for a request: the override, else the client key's, else a weighted draw among the variants
        not ``unavailable`` (among all of them if none is left). Pinned and sticky requests keep their variant
        whether it is available or not: moving them would break the stickiness an experiment relies on."""
        if override:
            if override not in self.names:
                raise NotFound(f"unknown variant {override!r}; known: {', '.join(self.names)}")
            return override
        weights, routable, edges = self._state
        if client_key:
            return min(routable, key=lambda name: _rendezvous_score(name, client_key, weights[name]))
        left = [name for name in routable if name not in unavailable] if unavailable else routable
        if left is not routable and left:
            return self._rng.choices(left, [weights[name] for name in left])[0]
        return routable[min(bisect.bisect_right(edges, self._rng.random()), len(routable) - 1)]

    def shadow_for(self, served: str) -> str | None:
        """The variant to shadow this request with, if it is sampled for shadowing."""
        if self.shadow_variant is None or self.shadow_variant == served:
            return None
        return self.shadow_variant if self._rng.random() < self.shadow_fraction else None


def _rendezvous_score(name: str, client_key: str, weight: float) -> float:
    """Weighted rendezvous hashing: the variant with the lowest score takes the key, each with a share equal to its
    weight's; a weight change moves only the keys it must."""
    return -math.log(stable_unit_interval(f"{name}\0{client_key}")) / weight


def stable_unit_interval(key: str) -> float:
    """Map ``key`` to (0, 1) with sha256: stable across processes, platforms and restarts."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
