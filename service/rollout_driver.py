"""The loop that runs rollouts: every ``rollout_interval_s`` it adds this process's new counts to each active
rollout's evidence, lets ``service.rollouts.decide`` judge it, stores the outcome, and makes the router's weights
follow the rollout's step. Starting, pausing, resuming and aborting (``/v1/rollouts``) go through here too.

Several API server processes may share one store: each adds only what it counted itself (keyed by host and pid;
``ServiceMetrics.own``, not the families a Ray ingress merges from every replica), the store serialises their
updates, and each process sets its own router's weights from the stored step while the rollout runs; whichever
process ticks first after the evidence suffices makes the decision, and the weights that end a rollout are set by
that process alone and reach the others as an operator's change would. The ingress replicas of a Ray cluster are
such processes, when they share ``state_dir`` (one machine, or a shared volume).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from anyio import to_thread

from service.dataplane import DataPlane
from service.errors import Conflict, NotFound, Unprocessable
from service.experiment import Samples, default_baseline
from service.metrics import REQUEST_LATENCY_BUCKETS
from service.rollout_store import RolloutStore
from service.rollouts import (
    ACTIVE,
    Action,
    ArmCounts,
    RolloutPlan,
    decide,
    evidence_of,
    new_rollout,
    record,
    step_feedback,
    take_evidence,
    weights_for,
    weights_to_restore,
)

log = logging.getLogger(__name__)
LATENCY_BOUNDS = (*REQUEST_LATENCY_BUCKETS, float("inf"))
OPERATOR_ACTIONS: dict[str, tuple[tuple[str, ...], Action]] = {
    "pause": (("running",), "pause"),
    "resume": (("paused",), "resume"),
    "abort": (ACTIVE, "abort"),
}


def arm_counts(samples: Samples, variant: str) -> ArmCounts:
    """A variant's counters as this process's metrics have them."""
    feedback = samples.by("blockdrop_feedback_total", "outcome", variant=variant)
    statuses = samples.by("blockdrop_requests_total", "status", variant=variant)
    buckets = dict(samples.buckets("blockdrop_request_latency_seconds", variant=variant))
    return ArmCounts(
        right=feedback.get("right", 0.0),
        wrong=feedback.get("wrong", 0.0),
        requests=sum(statuses.values()),
        errors=sum(count for status, count in statuses.items() if status.startswith("5")),
        latency_buckets=tuple(buckets.get(bound, 0.0) for bound in LATENCY_BOUNDS),
        flops=samples.total("blockdrop_executed_flops_total", variant=variant),
        images=samples.total("blockdrop_images_total", variant=variant),
    )


class RolloutDriver:
    def __init__(
        self,
        plane: DataPlane,
        store: RolloutStore,
        interval_s: float,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.plane = plane
        self.store = store
        self.interval_s = interval_s
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._clock = clock
        self._applied: dict[str, tuple[float, int]] = {}  # variant -> (started_at, version) this process applied
        # held from a decision's store update until this process's weights follow it, and by readers: whoever reads
        # a decision from this process finds its weights already set here
        self._deciding = asyncio.Lock()

    # operator actions ----------------------------------------------------------------------------------------
    async def start(self, variant: str, plan: RolloutPlan) -> dict[str, Any]:
        self.plane.variant(variant)  # 404 for an unknown variant
        baseline = plan.baseline or default_baseline(self.plane.models())
        if baseline not in self.plane.variants:
            raise Unprocessable(f"no variant named {baseline!r} to compare with")
        if baseline == variant:
            raise Unprocessable(f"variant {variant!r} cannot be rolled out against itself")
        weights = self.plane.router.weights
        now = self._clock()
        samples = Samples(self.plane.metrics.own())
        seen = {"variant": arm_counts(samples, variant).as_dict(), "baseline": arm_counts(samples, baseline).as_dict()}

        def begin(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is not None and current["status"] in ACTIVE:
                raise Conflict(f"variant {variant!r} already has a rollout ({current['status']}): abort it first")
            planned = plan.model_copy(update={"baseline": baseline})
            rollout = new_rollout(variant, baseline, planned, weights, now, self.settings_weights())
            return rollout | {"seen": {self.instance: seen}}

        async with self._deciding:
            rollout = await to_thread.run_sync(self.store.update, variant, begin)
            self._after(rollout, "start")
        return rollout

    async def act(self, variant: str, action: str) -> dict[str, Any]:
        allowed, decision = OPERATOR_ACTIONS[action]
        now = self._clock()

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise NotFound(f"no rollout of variant {variant!r}")
            if current["status"] not in allowed:
                raise Conflict(f"cannot {action} a rollout that is {current['status']}")
            return record(current, decision, [f"operator: {action}"], now)

        async with self._deciding:
            rollout = await to_thread.run_sync(self.store.update, variant, change)
            self._after(rollout, decision)
        return rollout

    async def get(self, variant: str) -> dict[str, Any]:
        async with self._deciding:
            rollout = await to_thread.run_sync(self.store.get, variant)
        if rollout is None:
            raise NotFound(f"no rollout of variant {variant!r}")
        return rollout

    async def all(self) -> list[dict[str, Any]]:
        async with self._deciding:
            return await to_thread.run_sync(self.store.all)

    async def restore(self) -> None:
        """At start, before the backend applies the changes shared since the service began: the weights the rollout
        that ended last left, while the settings' weights are those it began under (``weights_to_restore``). Set in
        this process alone, not shared: every process of the service starts from the same store, and one started
        later then takes the changes made since (an operator's after the rollout ended included) from its backend."""
        rollouts = [r for r in await to_thread.run_sync(self.store.all) if self._serves(r)]
        restored = weights_to_restore(self.settings_weights(), rollouts)
        if restored is None:
            return
        weights, rollout = restored
        share = rollout["share"] / 100 if rollout["status"] == "completed" else 0.0
        self.plane.metrics.rollout_share.labels(rollout["variant"]).set(share)
        self.plane.apply_changes({name: {"weight": weight} for name, weight in weights.items()})
        status = rollout["status"].replace("_", " ")
        log.info("weights as the rollout of %s left them (%s): %s", rollout["variant"], status, weights)

    def settings_weights(self) -> dict[str, float]:
        return {variant.name: variant.weight for variant in self.plane.settings.variants}

    # the loop ------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick (a locked store, a vanished variant) must not end rollouts for good
                log.exception("rollout tick failed")
            await asyncio.sleep(self.interval_s)

    async def tick(self) -> None:
        """One look at every rollout: new evidence and a decision for the active ones, weights for all."""
        samples = Samples(self.plane.metrics.own())
        async with self._deciding:
            for rollout in await to_thread.run_sync(self.store.all):
                if rollout["status"] in ACTIVE and self._serves(rollout):
                    decided: list[str] = []
                    judge = self._judge(samples, decided)
                    judged = await to_thread.run_sync(self.store.update, rollout["variant"], judge)
                    rollout = judged or rollout
                    if decided:
                        self._after(rollout, decided[0])
                self._follow(rollout)

    def _judge(self, samples: Samples, decided: list[str]) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
        """The store update of one tick; appends to ``decided`` the decision it made, if any."""

        def judge(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current["status"] not in ACTIVE:
                return None
            variant, baseline = current["variant"], current["baseline"]
            rollout = take_evidence(current, self.instance, arm_counts(samples, variant), arm_counts(samples, baseline))
            plan = RolloutPlan(**rollout["plan"])
            flops = self.plane.variants[variant].summary()["flops"]
            network = self.plane.variants[baseline].full_flops
            evidence = evidence_of(rollout, LATENCY_BOUNDS, flops["full"] + flops["policy"], network)
            decision = decide(plan, rollout["status"], rollout["step"], step_feedback(rollout), evidence)
            rollout = rollout | {"checks": [vars(check) for check in decision.checks], "reasons": decision.reasons}
            if decision.action == "hold":
                return rollout
            decided.append(decision.action)
            return record(rollout, decision.action, decision.reasons, self._clock())

        return judge

    def _serves(self, rollout: dict[str, Any]) -> bool:
        return rollout["variant"] in self.plane.variants and rollout["baseline"] in self.plane.variants

    def _after(self, rollout: dict[str, Any], decision: str) -> None:
        """Count and log a decision this process made, and set the weights it implies."""
        self.plane.metrics.rollout_decisions.labels(rollout["variant"], decision).inc()
        entry = rollout["history"][-1]
        outcome = "the weights back to those at its start" if decision == "abort" else f"to {entry['share']:g} %"
        log.info("rollout of %s: %s %s (%s)", rollout["variant"], decision, outcome, "; ".join(entry["reasons"]))
        self._follow(rollout, force=True)

    def _follow(self, rollout: dict[str, Any], force: bool = False) -> None:
        """Make this process's weights what the rollout's step says, once per change of the rollout, while it is
        active (also after a restart) and when this process made the change (``force``). Never for a rollout that
        another process ended: that one set the final weights and shared them with every process (``on_update``);
        setting them here again, a tick later, would undo an operator's change made in between."""
        variant = rollout["variant"]
        if not self._serves(rollout):
            return
        key = (rollout["started_at"], rollout["version"])
        applied = self._applied.get(variant)
        active = rollout["status"] in ACTIVE
        saw_it_run = applied is not None and applied[0] == key[0]
        if not force and (applied == key or not (active or saw_it_run)):
            return  # seen already, or ended before this process saw it run
        self._applied[variant] = key
        share = rollout["share"] / 100 if active or rollout["status"] == "completed" else None
        self.plane.metrics.rollout_share.labels(variant).set(share or 0.0)
        if not (active or force):
            return
        weights = weights_for(rollout)
        current = self.plane.router.weights
        # raise before lowering, so that some variant keeps a positive weight at every moment
        for name, weight in sorted(weights.items(), key=lambda item: item[1] <= current.get(item[0], 0.0)):
            if name in self.plane.variants and abs(current.get(name, 0.0) - weight) > 1e-12:
                self.plane.runtime.update_variant(name, weight=weight)
