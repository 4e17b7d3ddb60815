"""What the project reads of a process from /proc: its name, state, parent and CPU time, whatever its name holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from service.cluster import processes
from tests.conftest import eventually

# a command name with a space and parentheses: /proc/PID/stat's fields go on after its *last* ")"
NAME = "a) (b c)"
CHILD = f"""
import ctypes, time
ctypes.CDLL(None).prctl(15, {NAME.encode()!r}, 0, 0, 0)  # PR_SET_NAME
sum(range(10**7))  # some CPU time to read
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_is_read_through_its_life_whatever_its_name_holds():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        running = processes.status(child.pid)
        assert running is not None and running.name == NAME and running.ppid == os.getpid()
        assert running.state in ("R", "S") and running.cpu_seconds > 0
        assert processes.alive(child.pid) and processes.parent(child.pid) == os.getpid()
        assert child.pid in processes.children(os.getpid()) and child.pid in processes.descendants(os.getpid())

        os.kill(child.pid, signal.SIGSTOP)
        assert eventually(lambda: processes.status(child.pid).state == "T")
        assert processes.alive(child.pid)  # stopped is not ended

        os.kill(child.pid, signal.SIGKILL)
        assert eventually(lambda: not processes.alive(child.pid))
        assert processes.status(child.pid).state == "Z"  # ended, not yet reaped: still read, no longer alive
    finally:
        child.kill()
        child.wait()
    assert processes.status(child.pid) is None and processes.parent(child.pid) is None
    assert not processes.alive(child.pid)
