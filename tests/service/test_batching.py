import asyncio
import threading
import time

import pytest
import torch

from models.blockdrop import InferenceResult
from service.batching import BATCH_TIME_SMOOTHING, BatchTime, MicroBatcher
from service.errors import DeadlineExceeded, Overloaded, ServiceError


def _identity_model(sizes: list[int], gate: threading.Event | None = None, fail: bool = False):
    def infer(batch: torch.Tensor) -> InferenceResult:
        if gate is not None:
            gate.wait(5)
        if fail:
            raise RuntimeError("boom")
        sizes.append(len(batch))
        n = len(batch)
        return InferenceResult(batch.view(n, -1), torch.ones(n, 2, dtype=torch.bool), torch.full((n,), 7))

    return infer


def _far() -> float:
    return time.monotonic() + 10


def test_concurrent_images_share_batches_and_get_their_own_rows():
    sizes: list[int] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", _identity_model(sizes, gate), max_batch_size=4, max_wait_s=0.05, queue_limit=100)
    batcher.start()

    async def scenario():
        futures = [batcher.submit(torch.full((1,), float(i)), _far()) for i in range(10)]
        gate.set()
        return await asyncio.gather(*futures)

    results = asyncio.run(scenario())
    batcher.stop()
    assert [r.logits.item() for r in results] == [float(i) for i in range(10)]
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) < 10
    assert all(r.flops == 7 and r.batch_size in sizes for r in results)


def test_a_lone_request_does_not_wait_for_company():
    sizes: list[int] = []
    batcher = MicroBatcher("t", _identity_model(sizes), max_batch_size=8, max_wait_s=1.0, queue_limit=10)
    batcher.start()

    async def scenario():
        started = time.monotonic()
        await batcher.submit(torch.zeros(1), _far())
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5  # max_wait is 1 s, but nothing else was on its way
    batcher.stop()


def test_full_queue_refuses_at_once_with_retry_after():
    gate = threading.Event()
    batcher = MicroBatcher(
        "t", _identity_model([], gate), max_batch_size=1, max_wait_s=0, queue_limit=2, retry_after_s=3
    )
    batcher.start()

    async def scenario():
        futures = [batcher.submit(torch.zeros(1), _far())]
        await asyncio.sleep(0.05)  # the thread takes the first and blocks on the gate
        futures += [batcher.submit(torch.zeros(1), _far()) for _ in range(2)]
        with pytest.raises(Overloaded) as refused:
            batcher.submit(torch.zeros(1), _far())
        gate.set()
        await asyncio.gather(*futures)
        return refused.value

    error = asyncio.run(scenario())
    batcher.stop()
    assert error.status_code == 503 and error.headers == {"Retry-After": "3"}


def test_expired_images_are_not_run_and_failures_do_not_kill_the_thread():
    sizes: list[int] = []
    batcher = MicroBatcher("t", _identity_model(sizes), max_batch_size=4, max_wait_s=0, queue_limit=10)
    batcher.start()

    async def expired():
        return await batcher.submit(torch.zeros(1), time.monotonic() - 1)

    with pytest.raises(DeadlineExceeded):
        asyncio.run(expired())
    assert sizes == []
    batcher.stop()

    failing = MicroBatcher("f", _identity_model([], fail=True), max_batch_size=4, max_wait_s=0, queue_limit=10)
    failing.start()

    async def twice():
        for _ in range(2):
            with pytest.raises(ServiceError, match="inference failed: RuntimeError"):
                await failing.submit(torch.zeros(1), _far())

    asyncio.run(twice())
    failing.stop()


def test_stop_finishes_queued_work_then_refuses():
    sizes: list[int] = []
    batcher = MicroBatcher("t", _identity_model(sizes), max_batch_size=2, max_wait_s=0, queue_limit=10)
    batcher.start()

    async def scenario():
        futures = [batcher.submit(torch.zeros(1), _far()) for _ in range(5)]
        await asyncio.to_thread(batcher.stop, 5)
        await asyncio.gather(*futures)
        with pytest.raises(Overloaded, match="shutting down"):
            batcher.submit(torch.zeros(1), _far())

    asyncio.run(scenario())
    assert sum(sizes) == 5


def _slow_model(seconds: float, sizes: list[int]):
    def infer(batch: torch.Tensor) -> InferenceResult:
        time.sleep(seconds)
        sizes.append(len(batch))
        n = len(batch)
        return InferenceResult(batch.view(n, -1), torch.ones(n, 2, dtype=torch.bool), torch.full((n,), 7))

    return infer


def test_images_that_would_wait_past_the_budget_are_refused_at_once():
    """Bounded by waiting time, not count: with 0.1 s batches of 2 and a 0.25 s budget, a queue far below its count
    limit refuses once the batches ahead would take longer than the budget."""
    sizes: list[int] = []
    batcher = MicroBatcher(
        "t", _slow_model(0.1, sizes), max_batch_size=2, max_wait_s=0, queue_limit=1000, wait_budget_s=0.25
    )
    batcher.start()

    async def scenario():
        await batcher.submit(torch.zeros(1), _far())  # one batch: the batch time is known from here on
        futures, refused = [], []
        for _ in range(40):
            try:
                futures.append(batcher.submit(torch.zeros(1), _far()))
            except Overloaded as error:
                refused.append(error)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return refused, outcomes

    refused, outcomes = asyncio.run(scenario())
    batcher.stop()
    assert refused and all(e.headers == {"Retry-After": "1"} and "queue-wait budget" in e.message for e in refused)
    assert len(refused) + len(outcomes) == 40 and len(outcomes) <= 8  # at most ~0.25 s of 0.1 s batches of 2
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert served and all(r.queue_seconds <= 0.25 for r in served)  # none ran after waiting past the budget
    late = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(o, Overloaded) and "waited" in o.message for o in late)


def test_a_burst_after_lone_images_is_judged_by_the_time_of_a_full_batch():
    """The queue ahead drains in full batches: after lone images that take 10 ms, one full batch of 200 ms sets the
    estimate (a moving average over all batches would still say ~50 ms, and admit four times the budget to refuse it
    later, after the wait)."""
    sizes: list[int] = []

    def infer(batch: torch.Tensor) -> InferenceResult:
        return _slow_model(0.01 if len(batch) == 1 else 0.2, sizes)(batch)

    batcher = MicroBatcher("t", infer, max_batch_size=4, max_wait_s=1, queue_limit=1000, wait_budget_s=0.25)
    batcher.start()

    async def scenario():
        for _ in range(5):
            await batcher.submit(torch.zeros(1), _far())
        batcher.expect(4)  # four on their way: the batch waits for them
        full = [batcher.submit(torch.zeros(1), _far()) for _ in range(4)]
        batcher.expect(-4)
        await asyncio.gather(*full)
        futures, refused = [], 0
        for _ in range(16):
            try:
                futures.append(batcher.submit(torch.zeros(1), _far()))
            except Overloaded:
                refused += 1
        await asyncio.gather(*futures, return_exceptions=True)
        return refused

    refused = asyncio.run(scenario())
    batcher.stop()
    assert sizes[:6] == [1, 1, 1, 1, 1, 4]
    # refused once 2 full batches (0.4 s) were queued ahead: 8 queued, at most 4 more taken by the running batch
    assert 4 <= refused <= 8


def test_the_batch_time_is_a_full_batchs_once_one_ran():
    clock = BatchTime(full_size=8)
    assert clock.seconds == 0
    clock.observe(1, 0.01)
    assert clock.seconds == pytest.approx(0.01)  # the best guess before a full batch
    clock.observe(8, 0.2)
    for _ in range(20):
        clock.observe(1, 0.01)
    assert clock.seconds == pytest.approx(0.2)
    clock.observe(8, 0.3)
    assert clock.seconds == pytest.approx(0.2 + BATCH_TIME_SMOOTHING * 0.1)


def test_a_replica_whose_model_is_down_leaves_the_queue_to_the_others():
    up, down = [], []
    replica_up = threading.Event()
    replica_up.set()
    batcher = MicroBatcher(
        "t",
        [_identity_model(up), _identity_model(down)],
        max_batch_size=1,
        max_wait_s=0,
        queue_limit=100,
        replica_ready=[replica_up.is_set, lambda: False],
    )
    batcher.start()

    async def scenario():
        return await asyncio.gather(*(batcher.submit(torch.zeros(1), _far()) for _ in range(20)))

    assert len(asyncio.run(scenario())) == 20
    batcher.stop(timeout=5)
    assert len(up) == 20 and down == []


def test_a_request_of_many_images_may_wait_for_its_own_batches():
    """Budget per request, not per image: the 8th batch of one 32-image request waits for the 7 before it, and is
    still served; an overload is the queue ahead of a request, not the request's own images."""
    sizes: list[int] = []
    batcher = MicroBatcher(
        "t", _slow_model(0.05, sizes), max_batch_size=4, max_wait_s=0, queue_limit=1000, wait_budget_s=0.1
    )
    batcher.start()

    async def scenario():
        await batcher.submit(torch.zeros(1), _far())  # the batch time is known from here on
        futures = [batcher.submit(torch.zeros(1), _far(), position=i) for i in range(32)]
        return await asyncio.gather(*futures)

    results = asyncio.run(scenario())
    batcher.stop()
    assert len(results) == 32 and max(r.queue_seconds for r in results) > 0.1


def test_the_loop_lag_counts_a_loop_that_is_late_every_time_not_once():
    from service.loop_lag import LoopLag

    async def scenario() -> tuple[float, float, float]:
        lag = LoopLag(period_s=0.01)
        lag.start()
        await asyncio.sleep(0.1)
        idle = lag.seconds
        time.sleep(0.3)  # one stall: a collection, another thread holding the GIL
        await asyncio.sleep(0.05)
        after_one_stall = lag.seconds
        for _ in range(30):  # saturated: every turn of the loop runs long
            time.sleep(0.05)
            await asyncio.sleep(0)
        saturated = lag.seconds
        await lag.stop()
        return idle, after_one_stall, saturated

    idle, after_one_stall, saturated = asyncio.run(scenario())
    assert idle < 0.02 and after_one_stall < 0.02
    assert saturated > 0.03
