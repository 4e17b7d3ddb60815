"""Request images -> model inputs, with the memory and threads that decoding may take bounded for the whole process.

Every image's peak decoding bytes are known from its header (``ImagePreprocessor.decode_cost``) before a pixel is
decoded. Small requests decode on the event loop (cheaper than a thread hop); the rest reserve their bytes from
one budget and decode on a few threads. A request that would take the budget past its size waits for it as long
as a request may wait in a queue, then gets a 503 with Retry-After: a burst of large images costs the process
at most the budget, whatever the number of connections, and the memory comes back when the burst is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from PIL import Image
from torch import Tensor

from service.errors import Overloaded, PayloadTooLarge, ServiceError
from service.imaging import ImagePreprocessor
from service.libc import release_free_memory

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Requests whose images decode in at most this many bytes in all (a few CIFAR-sized images) decode on the event
# loop: tens of microseconds, less than the hop to a thread. Bodies this small are also read (headers) on the loop.
INLINE_DECODE_BYTES = 16 * 32 * 32 * 12
INLINE_BODY_BYTES = 64 * 1024
# above this, a decode hands its freed memory back to the system at once (glibc keeps freed heap otherwise)
TRIM_AFTER_BYTES = 8 * 1024 * 1024


class DecodeBudget:
    """Bytes of decoding in flight, bounded: ``reserve`` waits up to ``wait_s`` for room, then refuses (503)."""

    def __init__(self, capacity_bytes: int, retry_after_s: int = 1):
        self.capacity = capacity_bytes
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self._freed: asyncio.Condition | None = None  # made in the event loop that first waits

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, wait_s: float) -> AsyncIterator[None]:
        if nbytes > self.capacity:
            raise PayloadTooLarge(
                f"decoding these images takes about {_mib(nbytes)} MiB, more than the {_mib(self.capacity)} MiB "
                "decode_memory_mb budget; send smaller images"
            )
        freed = self._freed = self._freed or asyncio.Condition()
        deadline = time.monotonic() + wait_s
        async with freed:
            while self.in_use + nbytes > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"image decoding is at its {_mib(self.capacity)} MiB memory budget; retry shortly",
                        self.retry_after_s,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), remaining)
            self.in_use += nbytes
        try:
            yield
        finally:
            async with freed:
                self.in_use -= nbytes
                freed.notify_all()


class Decoder:
    """Decodes each request's images where it is cheapest, within the process's decode budget."""

    def __init__(self, memory_bytes: int, threads: int, wait_s: float, retry_after_s: int = 1):
        self.budget = DecodeBudget(memory_bytes, retry_after_s)
        self.threads = CapacityLimiter(threads)
        self.wait_s = wait_s

    async def tensors(self, preprocess: ImagePreprocessor, images: list[bytes], named: bool = False) -> list[Tensor]:
        """One model input per image, or the first image's error (415, 413, 400) before anything is decoded; with
        ``named`` (the images of a JSON batch) the error says which, ``images[i]: …``."""
        if sum(len(data) for data in images) <= INLINE_BODY_BYTES:
            opened = each(preprocess.open, images, named)
        else:  # a large body's headers may take a while to walk: not on the loop
            opened = await to_thread.run_sync(each, preprocess.open, images, named)
        total = sum(cost for _, cost in opened)
        if total <= INLINE_DECODE_BYTES:
            return each(preprocess.decode, [image for image, _ in opened], named)
        async with self.budget.reserve(total, self.wait_s):
            pending = [image for image, _ in opened]
            return await to_thread.run_sync(_decode_all, preprocess, pending, total, named, limiter=self.threads)


def each(step: Callable[[T], R], items: list[T], named: bool) -> list[R]:
    """``step`` of every item; with ``named``, an item's refusal prefixed with its place, ``images[i]: …``."""
    done = []
    for i, item in enumerate(items):
        try:
            done.append(step(item))
        except ServiceError as error:
            if named:
                error.message = f"images[{i}]: {error.message}"
                error.args = (error.message,)
            raise
    return done


def _decode_all(preprocess: ImagePreprocessor, images: list[Image.Image], cost: int, named: bool) -> list[Tensor]:
    try:
        return each(preprocess.decode, images, named)
    finally:
        if cost > TRIM_AFTER_BYTES:
            release_free_memory()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f}"
