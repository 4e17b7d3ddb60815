"""The glibc calls the service makes through ctypes (Linux; each is a no-op where the C library lacks it)."""

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def free_heap_bytes() -> int | None:
    """The bytes glibc's heap holds free, over all its arenas (``mallinfo2``'s ``fordblks``); None where glibc is
    older than 2.33 or absent."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def name_process(name: str) -> None:
    """Show ``name`` in ``ps -o comm``, ``top`` and /proc/PID/comm (15 characters at most)."""
    libc = _libc()
    if libc is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
