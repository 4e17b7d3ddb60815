"""The glibc calls the project makes through ctypes (Linux; each is a no-op where the C library lacks it)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
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


def signal_when_parent_ends(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when its parent ends, killed included
    (``PR_SET_PDEATHSIG``), so a benchmark or test run stopped midway leaves no server running beside the next one.
    The signal follows the *thread* that started the child: start it from one that lives as long as the child
    should (the main thread). The service does not use it for its own processes (service/fork_server.py says why)."""
    libc = _libc()
    prctl = getattr(libc, "prctl", None)  # looked up here: the child, between fork and exec, only calls it
    parent = os.getpid()

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before the signal was armed
            os.kill(os.getpid(), signum)

    return arm
