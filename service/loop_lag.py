"""How late the event loop runs: the measure of how long a request that has arrived waits before it is even read.

Under overload on few cores the event loop, not a model's queue, is often where requests wait: HTTP parsing,
decoding and JSON for hundreds of connections. That wait happens before the service sees a request, so no queue
can bound it. The loop's lag can: a timer that should fire every ``period_s`` fires late by about as long as a
newly readable connection waits for its turn. Admission refuses new work (503, Retry-After) while the lag is over
its bound, which makes the refused requests cheap and the loop catch up (the idea of Node's toobusy).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

PERIOD_S = 0.01
# the lag is the smallest of the last few samples: the loop must have been late every time, not once (a single
# stall, a garbage collection or another thread holding the GIL for a moment, is not an overload)
SAMPLES = 4


class LoopLag:
    def __init__(self, period_s: float = PERIOD_S):
        self.period_s = period_s
        self.seconds = 0.0  # how late the loop's timers have all been, lately
        self._recent: deque[float] = deque([0.0] * SAMPLES, maxlen=SAMPLES)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start measuring, in the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._measure())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _measure(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.period_s)
            self._recent.append(max(0.0, time.monotonic() - before - self.period_s))
            self.seconds = min(self._recent)
