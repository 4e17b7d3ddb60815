"""The load-adaptive threshold: while a BlockDrop variant's queue wait breaks its latency SLO, raise its default
policy threshold a step at a time (fewer blocks, less compute per image), never past the floor the operator set;
when the wait is well under the SLO again, step back toward the default. At most one step per period, so it never
oscillates faster than that. Explicit per-request budgets are not touched: they carry their own threshold."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from pydantic import BaseModel, Field, model_validator


class AdaptiveSettings(BaseModel):
    slo_queue_wait_ms: float = Field(gt=0, description="p95 of the queue wait to keep under")
    max_threshold: float = Field(gt=0, lt=1, description="the floor: the highest threshold the controller may set")
    step: float = Field(default=0.025, gt=0, lt=1, description="threshold change per period")
    period_s: float = Field(default=2.0, gt=0, description="at most one change per period")
    window_s: float = Field(default=5.0, gt=0, description="the queue waits the p95 is taken over")
    recover_below: float = Field(
        default=0.5, gt=0, lt=1, description="step back once the p95 is under this fraction of the SLO"
    )

    @model_validator(mode="after")
    def _window_covers_a_period(self) -> AdaptiveSettings:
        if self.window_s < self.period_s:
            raise ValueError("window_s must be at least period_s")
        return self


class ThresholdController:
    def __init__(self, settings: AdaptiveSettings, default: Callable[[], float], clock: Callable[[], float]):
        self.settings = settings
        self._default = default  # the operator's default, read live
        self._clock = clock
        self._waits: collections.deque[tuple[float, float]] = collections.deque()
        self._raised = 0  # steps above the default
        self._last_change = clock()
        self._lock = threading.Lock()

    def observe(self, queue_wait_s: float) -> None:
        self._waits.append((self._clock(), queue_wait_s))

    def threshold(self) -> float:
        """The live default threshold, after a control step if one is due."""
        with self._lock:
            now = self._clock()
            if now - self._last_change >= self.settings.period_s:
                self._control(now)
            return self._current()

    def _current(self) -> float:
        default = self._default()
        ceiling = max(default, self.settings.max_threshold)
        return min(round(default + self._raised * self.settings.step, 6), ceiling)

    def _control(self, now: float) -> None:
        while self._waits and self._waits[0][0] < now - self.settings.window_s:
            self._waits.popleft()
        self._last_change = now
        if not self._waits:
            if self._raised:
                self._raised -= 1  # no traffic at all: nothing is waiting
            return
        waits = sorted(wait for _, wait in self._waits)
        p95_ms = waits[min(len(waits) - 1, int(0.95 * len(waits)))] * 1000
        slo = self.settings.slo_queue_wait_ms
        default = self._default()
        if p95_ms > slo and self._current() < max(default, self.settings.max_threshold):
            self._raised += 1
        elif p95_ms < slo * self.settings.recover_below and self._raised:
            self._raised -= 1
