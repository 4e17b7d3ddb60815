"""The two glibc calls the service makes through ctypes (Linux; each is a no-op where the C library lacks it)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

PR_SET_NAME = 15


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``): large decodes are freed into the
    heap of the thread that ran them, where glibc would otherwise keep them for good."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def name_process(name: str) -> None:
    """Show ``name`` in ``ps -o comm``, ``top`` and /proc/PID/comm (15 characters at most)."""
    libc = _libc()
    if libc is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
