"""Micro-batching: one bounded queue and one inference thread per variant, apart from the web server.

Requests put one image each on the queue and await a future; the thread takes the first waiting image, gathers
more until the batch is full or the wait is over, runs the variant once and resolves every future. It waits
only while more images for this variant are on their way (decoding), so a lone request is not delayed.

The queue is bounded by waiting time, not only by count: an image is refused at once (503 with Retry-After) when
the batches ahead of it would take longer than the queue-wait budget (from the time a full batch takes),
or when the queue is full; an image that still waited past the budget is answered 503 rather than run late, and
one whose deadline passed is not run. So under any overload a served image waited at most about the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from models.blockdrop import InferenceResult
from service.errors import DeadlineExceeded, Overloaded, ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    logits: Tensor  # [classes]
    keep_mask: Tensor  # [blocks] bool
    flops: int
    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass
class _Item:
    tensor: Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float
    deadline: float
    threshold: float | None = None  # this image's policy threshold, when it is not the variant's
    patience: float = float("inf")  # seconds it may wait for a batch before it is refused rather than run


_STOP = object()
BatchObserver = Callable[[InferenceResult, float], None]
Infer = Callable[..., InferenceResult]
# weight of the newest batch in the moving average of batch time that admission estimates waits from
BATCH_TIME_SMOOTHING = 0.2
# how often a replica whose worker is down looks again, while another replica takes the batches
IDLE_REPLICA_POLL_S = 0.05


class MicroBatcher:
    def __init__(
        self,
        name: str,
        infer: Infer | list[Infer],
        max_batch_size: int,
        max_wait_s: float,
        queue_limit: int,
        retry_after_s: int = 1,
        on_batch: BatchObserver | None = None,
        wait_budget_s: float = float("inf"),
        replica_ready: list[Callable[[], bool]] | None = None,
    ):
        """``wait_budget_s``: the longest an image may wait for its batch. ``replica_ready`` (one per replica):
        whether that replica's model answers; one that does not leaves the queue to the others."""
        self.name = name
        # one thread per replica of the model: each takes its own batches from the shared queue
        self._replicas = infer if isinstance(infer, list) else [infer]
        self._ready = replica_ready or [lambda: True] * len(self._replicas)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self.retry_after_s = retry_after_s
        self.wait_budget_s = wait_budget_s
        self.batch_time = BatchTime(max_batch_size)
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_limit)
        self._incoming = 0  # images routed here and still being decoded
        self._incoming_lock = threading.Lock()
        self._accepting = False
        self._threads = [
            threading.Thread(target=self._run, args=(replica, ready), name=f"infer-{name}-{i}", daemon=True)
            for i, (replica, ready) in enumerate(zip(self._replicas, self._ready))
        ]

    def start(self) -> None:
        self._accepting = True
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def expect(self, images: int) -> None:
        """Announce images that will be submitted soon (or withdraw them with a negative count)."""
        with self._incoming_lock:
            self._incoming += images

    def submit(
        self, tensor: Tensor, deadline: float, threshold: float | None = None, position: int = 0
    ) -> asyncio.Future:
        """Queue one image; call from the event loop. ``deadline`` is a ``time.monotonic()`` value; ``threshold``
        is this image's own policy threshold (a batch may mix them: the policy runs once, each row compared with its
        own); ``position`` is its place among its request's images: a request is admitted by its first image, and
        the later ones may wait for the batches of the earlier ones as well as the budget."""
        if not self._accepting:
            raise Overloaded(f"variant {self.name!r} is shutting down", self.retry_after_s)
        if position == 0:
            self.refuse_if_overloaded()
        own_batches_s = (position // self.max_batch_size) * self.batch_time.seconds / len(self._replicas)
        loop = asyncio.get_running_loop()
        item = _Item(
            tensor,
            loop.create_future(),
            loop,
            time.monotonic(),
            deadline,
            threshold,
            self.wait_budget_s + own_batches_s,
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Overloaded(
                f"variant {self.name!r} is overloaded: its queue is full ({self.queue_limit} images); retry shortly",
                self.retry_after_s,
            ) from None
        return item.future

    def expected_wait(self) -> float:
        """Seconds a new image would wait: the full batches ahead of it, shared by the replicas, at the time a full
        batch takes (0 until a batch has run)."""
        batches_ahead = self._queue.qsize() // self.max_batch_size
        return batches_ahead * self.batch_time.seconds / len(self._replicas)

    def refuse_if_overloaded(self) -> None:
        """Refuse a new request (503, Retry-After) whose first image would wait past the queue-wait budget."""
        expected = self.expected_wait()
        if expected > self.wait_budget_s:
            raise Overloaded(
                f"variant {self.name!r} is overloaded: about {expected * 1000:.0f} ms of batches are queued ahead, "
                f"over the {self.wait_budget_s * 1000:.0f} ms queue-wait budget; retry shortly",
                self.retry_after_s,
            )

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new images, finish the queued ones, end the thread."""
        self._accepting = False
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:
            self._queue.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in alive:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _run(self, infer: Infer, ready: Callable[[], bool]) -> None:
        stopping = False
        while not stopping:
            if self._accepting and not ready() and any(other() for other in self._ready):
                time.sleep(IDLE_REPLICA_POLL_S)  # this replica's model is down: the others take the batches
                continue
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            wait_until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                item, stopping = self._next_item(wait_until)
                if item is None:
                    break
                batch.append(item)
            self._process(batch, infer)

    def _next_item(self, wait_until: float) -> tuple[_Item | None, bool]:
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            remaining = wait_until - time.monotonic()
            with self._incoming_lock:
                more_coming = self._incoming > 0
            if remaining <= 0 or not more_coming:
                return None, False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None, False
        if item is _STOP:
            return None, True
        return item, False

    def _process(self, batch: list[_Item], infer: Infer) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            refusal = too_late(self.name, now, item.enqueued, item.deadline, item.patience, self.retry_after_s)
            if refusal is not None:
                _resolve(item, error=refusal)
            elif not item.future.cancelled():
                live.append(item)
        if not live:
            return
        import torch

        started = time.monotonic()
        try:
            batch = torch.stack([item.tensor for item in live])
            thresholds = thresholds_of([item.threshold for item in live])
            result = infer(batch) if thresholds is None else infer(batch, thresholds)
        except ServiceError as error:  # said plainly already (a worker restarting): these requests get it as it is
            log.warning("batch of %d refused on variant %s: %s", len(live), self.name, error.message)
            for item in live:
                _resolve(item, error=error)
            return
        except Exception as error:  # a model failure must fail these requests, not the thread
            log.exception("inference failed on variant %s", self.name)
            for item in live:
                _resolve(item, error=ServiceError(f"inference failed: {type(error).__name__}"))
            return
        # the model's own time where the worker measured it, else the call's
        seconds = getattr(result, "model_seconds", None) or time.monotonic() - started
        elapsed = time.monotonic() - started  # what the queue waits for: the hand-over included
        self.batch_time.observe(len(live), elapsed)
        if self._on_batch is not None:
            self._on_batch(result, seconds)
        flops = result.flops.tolist()
        for i, item in enumerate(live):
            _resolve(
                item,
                value=ImageResult(
                    logits=result.logits[i],
                    keep_mask=result.keep_mask[i],
                    flops=flops[i],
                    queue_seconds=started - item.enqueued,
                    inference_seconds=seconds,
                    batch_size=len(live),
                ),
            )


def too_late(
    name: str, now: float, enqueued: float, deadline: float, patience: float, retry_after_s: int
) -> ServiceError | None:
    """Why an image taken for a batch at ``now`` must not run: its request's deadline passed (504), or it waited
    longer than its ``patience`` (503: under overload a served image waited at most about the budget); else None."""
    if deadline <= now:
        return DeadlineExceeded("the request's deadline passed while it waited in the queue")
    if now - enqueued > patience:
        return Overloaded(
            f"variant {name!r} is overloaded: the image waited {(now - enqueued) * 1000:.0f} ms for a batch, over "
            f"its {patience * 1000:.0f} ms queue-wait budget; retry shortly",
            retry_after_s,
        )
    return None


class BatchTime:
    """The time a full batch takes, which admission estimates waits from: the queue ahead of an image is drained in
    full batches. A moving average over full batches once one ran; before that, over every batch (the best guess
    there is, low while only small ones ran). Averaging small and full batches together would underestimate the
    wait for a burst that follows single-image traffic by the ratio of their times."""

    def __init__(self, full_size: int):
        self.full_size = full_size
        self._any = 0.0  # every batch's time
        self._full = 0.0  # full batches' time

    def observe(self, size: int, seconds: float) -> None:
        self._any = smoothed(self._any, seconds)
        if size >= self.full_size:
            self._full = smoothed(self._full, seconds)

    @property
    def seconds(self) -> float:
        """0 until a batch has run."""
        return self._full or self._any


def smoothed(average: float, seconds: float) -> float:
    """The moving average with the newest ``seconds`` in (the first value sets it)."""
    return seconds if average == 0 else average + BATCH_TIME_SMOOTHING * (seconds - average)


def thresholds_of(thresholds: list[float | None]) -> Tensor | None:
    """Per-row policy thresholds for a batch (NaN: the variant's own), or None when every row uses its own."""
    if all(threshold is None for threshold in thresholds):
        return None
    import torch

    return torch.tensor([math.nan if threshold is None else threshold for threshold in thresholds])


def _resolve(item: _Item, value: ImageResult | None = None, error: Exception | None = None) -> None:
    def settle() -> None:
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
        item.loop.call_soon_threadsafe(settle)
