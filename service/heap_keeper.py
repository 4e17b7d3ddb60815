"""Freed memory handed back to the system whatever freed it. glibc keeps a heap's free pages for good; the
service trims at once after the things it can see end (large decodes, request bodies: ``service/body_budget.py``),
but not after what it cannot: gRPC assembles each request's message in its own core and frees it when the RPC or
its connection ends, which the service is never told (stalled messages dropped with their connections stayed
resident until this: ``blockdrop bench hostile``'s stalled gRPC step). So every few seconds, once the heap holds
more than a little newly freed, the free pages go back (``malloc_trim``, off the event loop: milliseconds, and
next to nothing when there is nothing to free). The trims at once stay: a large decode is freed into the arena
of the thread that ran it, which the other decode threads, on arenas of their own, do not reuse, so leaving it to
this keeper could hold up to a decode budget per decode thread between its checks; and a burst of bodies ends at a
moment the service knows."""

from __future__ import annotations

import asyncio

from service.libc import free_heap_bytes, release_free_memory

CHECK_INTERVAL_S = 5.0
TRIM_ABOVE_BYTES = 32 * 1024 * 1024


async def keep_heap_trimmed(interval_s: float = CHECK_INTERVAL_S, above_bytes: int = TRIM_ABOVE_BYTES) -> None:
    """Until cancelled: every ``interval_s``, trim the heap once it holds ``above_bytes`` more free than after the
    last trim (trimmed pages still count as free: ``mallinfo2`` does not tell them apart)."""
    loop = asyncio.get_running_loop()
    trimmed_at = 0  # the free bytes after the last trim, or the least seen since
    while True:
        await asyncio.sleep(interval_s)
        free = free_heap_bytes()
        if free is None:
            return  # no mallinfo2 here: nothing to go by
        if free - trimmed_at > above_bytes:
            await loop.run_in_executor(None, release_free_memory)
            trimmed_at = free_heap_bytes() or 0
        else:
            trimmed_at = min(trimmed_at, free)  # reused since: what is freed next counts again
