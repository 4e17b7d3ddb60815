"""Children forked from the fork server (service/fork_server.py): their liveness and their kill do not depend on the
fork server, and a fork server that does not fork holds a start up for a bounded time only."""

from __future__ import annotations

import os
import signal
import time

import pytest

import service.fork_server as fork_server_module
from service.cluster.processes import alive, parent
from service.fork_server import ForkServerEnded, ForkStart, fork_server_context, kill_fork_server
from tests.conftest import eventually


@pytest.fixture(scope="module", autouse=True)
def _own_fork_server():
    """The tests kill fork servers; the one left at the end, which preloads nothing, goes too (the next test's
    starts get one that preloads what they ask for)."""
    yield
    kill_fork_server()


def _sleeper(seconds: float = 60.0):
    # a fork server started for it preloads nothing: a child that only sleeps needs nothing
    process = fork_server_context(("time",)).Process(target=time.sleep, args=(seconds,), name="sleeper")
    process.daemon = True
    return process


def test_a_child_outlives_its_killed_fork_server_and_is_still_seen_and_killed():
    """multiprocessing alone would report the child ended (exit code 255) once the fork server is gone, and its
    kill would signal nothing."""
    child = ForkStart(_sleeper()).result()
    fork_server = parent(child.pid)
    assert fork_server != os.getpid() and child.is_alive()
    os.kill(fork_server, signal.SIGKILL)
    assert eventually(lambda: not alive(fork_server))
    assert not child.process.is_alive()  # what multiprocessing says: wrongly
    assert child.is_alive() and alive(child.pid)
    child.kill()
    child.join(5)
    assert not child.is_alive() and eventually(lambda: not alive(child.pid))

    after = ForkStart(_sleeper()).result()  # the next start gets a new fork server
    assert parent(after.pid) not in (fork_server, os.getpid())
    after.kill()
    after.join(5)
    assert not after.is_alive()
    assert after.exitcode == -signal.SIGKILL  # reported by the (live) fork server


def test_a_start_right_after_the_fork_server_is_killed_gets_a_new_one():
    """``kill_fork_server`` returns once the fork server is gone: multiprocessing, asked to start a child a moment
    after the SIGKILL, still took the dying one for alive and failed the start with end-of-file."""
    for _ in range(5):
        first = ForkStart(_sleeper()).result()
        kill_fork_server()
        after = ForkStart(_sleeper()).result()
        assert parent(after.pid) != parent(first.pid)
        for child in (first, after):
            child.kill()
            child.join(5)


def _ended_and_replaced(stopped_within: float) -> None:
    """Two starts wait on a stopped fork server; it is ended, both fail with ForkServerEnded (one start ended it,
    the other was waiting on it too) within ``stopped_within`` s, the children it forked run on, and the next start
    forks from a new fork server."""
    first = ForkStart(_sleeper()).result()
    fork_server = parent(first.pid)
    os.kill(fork_server, signal.SIGSTOP)
    try:
        waiting = [ForkStart(_sleeper()), ForkStart(_sleeper())]
        time.sleep(0.3)
        assert not any(start.done() for start in waiting)  # the caller goes on meanwhile
        started = time.monotonic()
        for start in waiting:
            with pytest.raises(ForkServerEnded):
                start.result()
        assert time.monotonic() - started < stopped_within
        assert eventually(lambda: not alive(fork_server))
    finally:
        if alive(fork_server):
            os.kill(fork_server, signal.SIGCONT)
    assert first.is_alive()  # the children it forked run on
    again = ForkStart(_sleeper()).result()
    assert parent(again.pid) != fork_server and again.is_alive()
    for child in (first, again):
        child.kill()
        child.join(5)
        assert not child.is_alive()


def test_a_fork_server_that_does_not_fork_is_ended_at_the_deadline(monkeypatch):
    """Not seen stopped (a fork server hung some other way), it is ended once FORK_TIMEOUT_S has passed."""
    monkeypatch.setattr(fork_server_module, "FORK_TIMEOUT_S", 1.0)  # one that has forked: done importing
    monkeypatch.setattr(fork_server_module, "_stopped", lambda pid: False)
    _ended_and_replaced(stopped_within=3)


def test_a_stopped_fork_server_is_ended_without_waiting_out_the_deadline(monkeypatch):
    monkeypatch.setattr(fork_server_module, "FORK_TIMEOUT_S", 60.0)
    _ended_and_replaced(stopped_within=fork_server_module.STOPPED_FORK_SERVER_S + 2)


def test_a_failed_start_that_ended_no_fork_server_keeps_its_own_error(monkeypatch):
    """Only a start that failed because the fork server was ended is ForkServerEnded (started again at once); one
    that fails on its own (here: its target cannot be pickled) keeps its error, and waits out the backoff."""
    process = fork_server_context(("time",)).Process(target=lambda: None, name="unpicklable")
    with pytest.raises(Exception) as raised:
        ForkStart(process).result()
    assert not isinstance(raised.value, ForkServerEnded)


def test_abandoning_a_start_ends_the_stopped_fork_server_rather_than_leave_it_behind():
    first = ForkStart(_sleeper()).result()
    fork_server = parent(first.pid)
    os.kill(fork_server, signal.SIGSTOP)
    try:
        waiting = ForkStart(_sleeper())  # its deadline is seconds away
        time.sleep(0.3)
        waiting.abandon()
        assert eventually(lambda: waiting.done(), seconds=5)
        with pytest.raises((EOFError, OSError)):
            waiting.result()
        assert eventually(lambda: not alive(fork_server))
    finally:
        if alive(fork_server):
            os.kill(fork_server, signal.SIGCONT)
    first.kill()
    first.join(5)
    assert not first.is_alive()


def test_starts_queued_while_a_new_fork_server_imports_are_not_ended_once_it_forks(monkeypatch):
    """Starts that began together, while a new fork server imported (here torch, then a module that takes 3 s), are
    forked one after the other; the deadline of a fork server that has forked counts from its last fork, so the
    later ones are not taken for stuck (counted from their own beginning, they were past it the moment the first one
    forked)."""
    from tests.service import slow_preload

    # well under the import, and well over the time between two forks, even on a machine busy with other tests
    monkeypatch.setattr(fork_server_module, "FORK_TIMEOUT_S", slow_preload.IMPORT_S / 2)
    kill_fork_server()  # the next start launches one that imports first (forking a torch process takes a while)
    processes = []
    for _ in range(4):
        process = fork_server_context(("torch", slow_preload.__name__)).Process(
            target=time.sleep, args=(60,), name="sleeper"
        )
        processes.append(process)
    began = time.monotonic()
    starts = [ForkStart(process) for process in processes]
    while not all(start.done() for start in starts):  # polled as the supervisor polls its children's starts
        time.sleep(0.01)
    assert time.monotonic() - began >= slow_preload.IMPORT_S  # (the fork server ignores a preload it cannot import)
    children = [start.result() for start in starts]
    assert all(child.is_alive() for child in children)
    assert len({parent(child.pid) for child in children}) == 1  # one fork server forked them all
    for child in children:
        child.kill()
        child.join(5)
