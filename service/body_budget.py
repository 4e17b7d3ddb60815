"""The memory of the request bodies a server process is receiving at once, bounded: shared by its connections
(``service/http_protocol.py``) or its requests (``service/api/body_bounds.py``, where the HTTP server is not ours)."""

from __future__ import annotations

import asyncio

from service.libc import release_free_memory


class BodiesInProgress:
    """The bytes of request bodies received but not yet complete, over all of a process's requests (one event
    loop: no lock); a refused body counts until its handler has let go of it (its connection is closed). Bodies
    are freed into glibc's heap, which keeps the pages: once none is in progress after they held
    ``TRIM_AFTER_BYTES`` or more, the heap's free pages go back to the system (off the event loop, a moment later,
    when the requests they belonged to have let go of them)."""

    TRIM_AFTER_BYTES = 32 * 1024 * 1024
    TRIM_DELAY_S = 2.0  # past http_protocol.LINGER_S, when a refused request's handler has seen its connection go

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0  # since the last trim

    def add(self, size: int) -> bool:
        """Count ``size`` more bytes; False if that passes the limit."""
        self.held += size
        self.peak = max(self.peak, self.held)
        return self.held <= self.limit

    def release(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.held -= size
        if self.held == 0 and self.peak >= self.TRIM_AFTER_BYTES:
            self.peak = 0
            loop.call_later(self.TRIM_DELAY_S, loop.run_in_executor, None, release_free_memory)


def over_budget_message(limit: int) -> str:
    return (
        f"the service is receiving more request bodies at once than its {limit}-byte budget (BODY_MEMORY_MB); "
        "retry shortly"
    )


def body_timeout_message(timeout_s: float) -> str:
    return f"the request's body did not arrive within {timeout_s:g} s of its headers"
