"""What an operator may change while the service runs: each variant's default threshold (directly, or through a
compute budget on its calibrated curve) and its A/B weight in the router. The admin API and the rollout driver
change them here; a backend with several servers shares each change (``on_update``) and takes the others'
(``apply_changes``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from service.budget import budget_threshold
from service.errors import NotFound, Unprocessable
from service.metrics import ServiceMetrics
from service.routing import Router
from service.variants import Variant

log = logging.getLogger(__name__)


class RuntimeSettings:
    def __init__(
        self, variants: dict[str, Variant], router: Router, metrics: ServiceMetrics, budget_levels: dict[str, float]
    ):
        self.variants = variants
        self.router = router
        self.metrics = metrics
        self.budget_levels = budget_levels
        # called after an operator's change, with the variant and what changed (a cluster shares it)
        self.on_update: Callable[[str, dict[str, float]], None] | None = None

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise NotFound(f"unknown model {name!r}; known: {', '.join(self.variants)}")
        return self.variants[name]

    def traffic_shares(self) -> dict[str, float]:
        weights = self.router.weights
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    def variant_settings(self, name: str) -> dict[str, Any]:
        """What an operator may change at runtime, as it is now."""
        variant = self.variant(name)
        return {
            "name": name,
            "mode": variant.mode,
            "threshold": variant.threshold if variant.mode == "blockdrop" else None,
            "weight": self.router.weights[name],
            "traffic_share": self.traffic_shares()[name],
        }

    def update_variant(
        self, name: str, threshold: float | None = None, budget: str | None = None, weight: float | None = None
    ) -> dict[str, Any]:
        """Change a variant's default threshold (directly, or through a budget on its calibrated curve) and its A/B
        weight, at once and without a restart: requests already queued keep the threshold they were given."""
        variant = self.variant(name)
        if (threshold is not None or budget is not None) and variant.mode != "blockdrop":
            raise Unprocessable(f"variant {name!r} runs every block: it has no threshold to set")
        if threshold is not None and budget is not None:
            raise Unprocessable("give a threshold or a budget, not both")
        if budget is not None:
            threshold, _ = budget_threshold(budget, self.budget_levels, variant.manifest.calibration, name)
        if threshold is not None and not 0 < threshold < 1:
            raise Unprocessable(f"threshold must be in (0, 1), got {threshold}")
        if weight is not None:
            try:
                self.router.set_weights(self.router.weights | {name: weight})
            except ValueError as error:
                raise Unprocessable(str(error)) from None
            self.metrics.admin_changes.labels(name, "weight").inc()
        if threshold is not None:
            variant.threshold = threshold
            self.metrics.admin_changes.labels(name, "threshold").inc()
        threshold_now = f"threshold {variant.threshold}, " if variant.mode == "blockdrop" else ""
        log.info("variant %s changed: %sweight %s", name, threshold_now, self.router.weights[name])
        change = {k: v for k, v in {"threshold": threshold, "weight": weight}.items() if v is not None}
        if self.on_update is not None and change:
            self.on_update(name, change)
        return self.variant_settings(name)

    def apply_changes(self, changes: dict[str, dict[str, float]]) -> None:
        """Take operator changes made on another replica of this service (already checked there)."""
        weights = self.router.weights | {
            name: change["weight"] for name, change in changes.items() if "weight" in change and name in self.variants
        }
        if weights != self.router.weights:
            self.router.set_weights(weights)
        for name, change in changes.items():
            if "threshold" in change and name in self.variants:
                self.variants[name].threshold = change["threshold"]
