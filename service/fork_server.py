"""How the service starts its own processes (inference workers, model servers, API servers): forked from a fork
server, each holding a lifeline to the service.

Python's fork server is a process started once like ``spawn`` starts one (a fresh interpreter: none of the
service's threads, no CUDA context), which imports the modules it is given and then forks a child for each start.
A start is then a fork, not a new interpreter importing torch (most of a worker's start-up, and of its replacement
after a crash: ``blockdrop bench startup``, docs/benchmarks.md). Forking that process is safe where forking the
service is not: it holds no lock of the service's threads and never touched CUDA. It keeps the environment and
working folder the service had when the first child started.

A child's parent is then the fork server, not the service, and the fork server runs until its last child has
ended; so a child cannot watch its parent to learn that the service is gone. It watches a *lifeline* instead: the
read end of a pipe whose write end only the service holds, which reads end-of-file once the service has ended,
however it ended (SIGKILL included). The children end, then the fork server.

Two more things keep the fork server from holding the service hostage:

- multiprocessing learns that a child ended from the fork server, and a killed fork server makes it report every
  child as ended (exit code 255) while they run on, and its ``kill()`` then signals none of them. ``ForkedProcess``
  watches and signals the child through a pidfd, which refers to the process itself, whoever its parent is.
- A start waits for the fork server to fork; a stopped one would hold it until continued. ``ForkStart`` starts on a
  thread of its own, so the caller can go on. A start still waiting after ``FORK_TIMEOUT_S`` (a fork server that has
  forked before: it is done importing), or for ``STOPPED_FORK_SERVER_S`` on a fork server that is stopped (SIGSTOP),
  kills the fork server, which fails the start with ``ForkServerEnded``; the caller starts again at once (the child
  was not at fault), and that start gets a new fork server.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import weakref
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from service.cluster import processes

log = logging.getLogger(__name__)

# a fork takes milliseconds; a new fork server first imports the preloaded modules (seconds; as long as a model's
# load at worst, on a machine busy loading models)
FORK_TIMEOUT_S = 5.0
FIRST_FORK_TIMEOUT_S = 120.0
# a stopped fork server (state T: SIGSTOP, not a debugger's trace stop) forks nothing until continued; one waited on for
# this long while stopped is ended without waiting out the deadline
STOPPED_FORK_SERVER_S = 1.0
_forked_by: int | None = None  # the last fork server that forked a child: done importing
_forked_at = 0.0  # when it last did: a start queued behind others waits from then, not from its own beginning
_ended_at = -1.0  # when a start last ended the fork server: every start waiting on it then failed for that

# torch._dynamo: torch imports it on a process's first FlopCounterMode convolution (models/flops.py, as a variant
# loads), most of that first load's time; imported once here, no child pays for it again
WORKER_MODULES = ("torch", "torch._dynamo", "service.worker")
SERVER_MODULES = (
    "torch",
    "torch._dynamo",
    "service.multiprocess.model_server",
    "service.multiprocess.api_server",
    "service.multiprocess.backend",
    "service.app",
)


def fork_server_context(preload: tuple[str, ...]) -> BaseContext:
    """The context to start children with; the fork server imports the ``preload`` modules when it starts, with the
    first child or ``start_fork_server`` (a later call's ``preload`` is ignored once it runs)."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context


def start_fork_server(preload: tuple[str, ...]) -> None:
    """Start the fork server now, without waiting for its imports: they overlap what this process does before its
    first child (loading the variants' descriptions). Its environment is this process's as it is now."""
    fork_server_context(preload)
    forkserver.ensure_running()


class Lifeline:
    """Made by the service, once: ``end`` goes to each child (in its arguments), the write end stays here and is
    never written to."""

    def __init__(self, context: BaseContext) -> None:
        self.end, self._held = context.Pipe(duplex=False)


def service_gone(end: Connection) -> bool:
    """In a child: whether the service that gave it ``end`` has ended (nothing is ever sent: readable means EOF)."""
    return end.poll()


class ForkedProcess:
    """A started child, watched and signalled through a pidfd (Linux 5.3 or later; elsewhere through
    multiprocessing, as before), so that neither depends on the fork server being alive."""

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self._pidfd: int | None = None
        self._ended = False  # gone before its pidfd could be opened

    def _watch(self) -> None:
        """Called once the process has started."""
        try:
            self._pidfd = os.pidfd_open(self.process.pid)
        except ProcessLookupError:  # it ended, and was reaped, within the start
            self._ended = True
        except (AttributeError, OSError):  # no pidfds here: multiprocessing's view
            return
        else:
            weakref.finalize(self, os.close, self._pidfd)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def exitcode(self) -> int | None:
        """The exit code the fork server reported; None while it runs (255 if the fork server was gone)."""
        return None if self.is_alive() else self.process.exitcode

    def is_alive(self) -> bool:
        if self._ended:
            return False
        if self._pidfd is None:
            return self.process.is_alive()
        return not wait([self._pidfd], 0)

    def join(self, timeout: float | None = None) -> None:
        if self._pidfd is None:
            if not self._ended:
                self.process.join(timeout)
            return
        if wait([self._pidfd], timeout):
            # the fork server reports the exit code as it reaps the child: a moment later, or never (stopped, gone)
            self.process.join(0.2)

    def send_signal(self, sig: int) -> None:
        """Signal the process if it runs (a process that has ended is left alone)."""
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.is_alive():
                os.kill(self.process.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServerEnded(OSError):
    """A start failed because it ended the fork server, which did not fork in time: the child was not at fault, and a
    start at once gets a new fork server."""


class ForkStart:
    """``process.start()`` on a thread of its own. Poll ``done()`` to go on meanwhile, or wait with ``result()``;
    either ends a start still waiting for the fork server past its time by killing the fork server: after
    ``FORK_TIMEOUT_S`` once that fork server has forked, ``FIRST_FORK_TIMEOUT_S`` while it may still be importing."""

    def __init__(self, process: BaseProcess) -> None:
        process.daemon = True  # the service's child: it may not start processes of its own
        self.child = ForkedProcess(process)
        self._began = time.monotonic()
        self._error: BaseException | None = None
        self._failed_at = 0.0
        self._finished = threading.Event()
        self._ended_at: float | None = None  # when this start killed the fork server
        threading.Thread(target=self._run, name=f"start-{process.name}", daemon=True).start()

    def _run(self) -> None:
        global _forked_by, _forked_at
        try:
            self.child.process.start()
            _forked_by, _forked_at = fork_server_pid(), time.monotonic()
            self.child._watch()
        except BaseException as error:  # handed to whoever asks for the result
            self._error, self._failed_at = error, time.monotonic()
        finally:
            self._finished.set()

    def done(self) -> bool:
        """Whether the start has ended, started or failed; past its time it is ended, failed."""
        if not self._finished.is_set() and self._ended_at is None:
            # a fork server that has forked is done importing: it may be idle (not forking) for FORK_TIMEOUT_S at
            # most, counted from this start or its last fork, whichever came later (starts that began while it
            # imported were queued behind each other); a new one gets FIRST_FORK_TIMEOUT_S from this start
            pid = fork_server_pid()
            if pid == _forked_by:
                limit, waited = FORK_TIMEOUT_S, time.monotonic() - max(self._began, _forked_at)
            else:
                limit, waited = FIRST_FORK_TIMEOUT_S, time.monotonic() - self._began
            if waited > limit:
                self._end(f"the fork server did not fork {self.child.name} in {limit:g} s; ending it")
            elif time.monotonic() - self._began > STOPPED_FORK_SERVER_S and pid is not None and _stopped(pid):
                self._end(f"the fork server (pid {pid}) is stopped and has not forked {self.child.name}; ending it")
        return self._finished.is_set()

    def result(self) -> ForkedProcess:
        """The started child, once started; else why not: ``ForkServerEnded`` if this start ended the fork server
        (also when the killed fork server still did not let go of it), else the start's own error."""
        while not self.done():
            if self._ended_at is not None and time.monotonic() - self._ended_at > 5.0:
                raise ForkServerEnded(f"{self.child.name} could not be started")
            self._finished.wait(0.05)
        if self._error is not None:
            if self._ended_at is not None or self._began <= _ended_at <= self._failed_at:  # by this start or another
                raise ForkServerEnded(f"{self.child.name} was not forked: its fork server was ended") from self._error
            raise self._error
        return self.child

    def abandon(self) -> None:
        """The caller is stopping: a start still waiting ends now (its fork server, stopped, would linger)."""
        if not self._finished.is_set() and self._ended_at is None:
            self._end(f"stopping while the fork server had not forked {self.child.name}; ending it")

    def _end(self, why: str) -> None:
        global _ended_at
        log.error("%s (the next start gets a new fork server)", why)
        self._ended_at = _ended_at = time.monotonic()
        kill_fork_server()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal."""
    return (found := processes.status(pid)) is not None and found.state == "T"


def fork_server_pid() -> int | None:
    """This process's fork server, if it started one (multiprocessing keeps it to itself)."""
    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def kill_fork_server(wait_s: float = 5.0) -> None:
    """SIGKILL this process's fork server: a start waiting on it fails (end-of-file), the children it forked run
    on, and the next start launches a new one. Returns once it has ended (at most ``wait_s``; left unreaped, for
    multiprocessing): multiprocessing takes a fork server for alive until it has, and a start a moment after the
    signal failed on the dying one."""
    pid = fork_server_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while processes.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.002)
