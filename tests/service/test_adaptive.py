"""The load-adaptive threshold on a simulated load trace: it rises while the SLO is broken, one step per period at
most, never past its floor, and comes back to the default when the load drops."""

from __future__ import annotations

import itertools

import pytest

from service.adaptive import AdaptiveSettings, ThresholdController


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trace(controller: ThresholdController, clock: Clock, seconds: float, wait_ms: float) -> list[float]:
    """Ten images a second, each having waited ``wait_ms``; the threshold each would get."""
    seen = []
    for _ in range(int(seconds * 10)):
        clock.now += 0.1
        controller.observe(wait_ms / 1000)
        seen.append(controller.threshold())
    return seen


def test_it_rises_under_violation_respects_floor_and_period_and_recovers():
    clock = Clock()
    settings = AdaptiveSettings(slo_queue_wait_ms=20, max_threshold=0.7, step=0.025, period_s=2, window_s=4)
    controller = ThresholdController(settings, default=lambda: 0.575, clock=clock)
    calm = _trace(controller, clock, 10, wait_ms=5)
    assert set(calm) == {0.575}
    overloaded = _trace(controller, clock, 30, wait_ms=80)
    changes = [i for i in range(1, len(overloaded)) if overloaded[i] != overloaded[i - 1]]
    assert all(b - a >= 20 for a, b in itertools.pairwise(changes))  # 20 ticks = 2 s = one period
    assert max(overloaded) == 0.7 and overloaded[-1] == 0.7  # up to the floor, not past it
    assert overloaded == sorted(overloaded)
    recovering = _trace(controller, clock, 30, wait_ms=2)
    assert recovering[-1] == 0.575 and recovering == sorted(recovering, reverse=True)
    assert recovering.index(0.575) <= 10 * 2 * 6 + 40  # six steps back, one per period, after the window clears


def test_in_between_the_slo_and_the_recovery_mark_it_holds():
    clock = Clock()
    settings = AdaptiveSettings(slo_queue_wait_ms=20, max_threshold=0.7, period_s=1, window_s=2)
    controller = ThresholdController(settings, default=lambda: 0.5, clock=clock)
    _trace(controller, clock, 3, wait_ms=50)
    held = _trace(controller, clock, 10, wait_ms=15)  # under the SLO but above half of it
    assert len(set(held[30:])) == 1


def test_an_operator_default_above_the_floor_is_kept_and_settings_are_checked():
    clock = Clock()
    settings = AdaptiveSettings(slo_queue_wait_ms=10, max_threshold=0.6, period_s=1, window_s=1)
    controller = ThresholdController(settings, default=lambda: 0.65, clock=clock)
    assert set(_trace(controller, clock, 5, wait_ms=100)) == {0.65}
    with pytest.raises(ValueError, match="window_s must be at least period_s"):
        AdaptiveSettings(slo_queue_wait_ms=10, max_threshold=0.6, period_s=5, window_s=1)


def test_the_service_degrades_under_its_slo(artifacts):
    """An SLO no queue can meet: each period the live default rises a step, up to the floor; the answers, the
    gauge and the degraded-images counter say so (budgets carry their own threshold: tests/service/test_budget.py)."""
    import re
    import time

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import VariantSettings
    from tests.service.conftest import make_settings, png_bytes

    adaptive = AdaptiveSettings(slo_queue_wait_ms=1e-6, max_threshold=0.6, step=0.05, period_s=0.05, window_s=5)
    variants = [
        VariantSettings(name="blockdrop", artifact=artifacts["tiny-blockdrop"], mode="blockdrop", adaptive=adaptive)
    ]
    with TestClient(create_app(make_settings(artifacts, variants=variants))) as client:
        seen = []
        for seed in range(6):
            time.sleep(0.06)
            answer = client.post("/v1/classify", content=png_bytes(seed=seed), headers={"content-type": "image/png"})
            seen.append(answer.json()["compute"]["threshold"])
        assert seen[0] == 0.5 and seen[-1] == 0.6 and seen == sorted(seen)
        metrics = client.get("/metrics").text
        assert re.search(r'blockdrop_policy_threshold\{variant="blockdrop"\} 0.6', metrics)
        degraded = float(re.search(r'blockdrop_degraded_images_total\{variant="blockdrop"\} (\S+)', metrics).group(1))
        assert degraded == sum(t > 0.5 for t in seen)
