"""A server a benchmark or test starts ends with its starter, even one killed with SIGKILL (service.libc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from service.cluster import processes
from tests.conftest import eventually

# a starter that starts two sleepers, one with the parent-death signal armed and one without, names them, and waits
STARTER = """
import subprocess, time
from service.libc import signal_when_parent_ends
armed = subprocess.Popen(["sleep", "60"], preexec_fn=signal_when_parent_ends())
unarmed = subprocess.Popen(["sleep", "60"])
print(armed.pid, unarmed.pid, flush=True)
time.sleep(60)
"""


def test_a_child_started_with_the_parent_death_signal_ends_when_its_starter_is_killed():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": root}
    )
    assert starter.stdout is not None
    armed, unarmed = (int(pid) for pid in starter.stdout.readline().split())
    try:
        assert processes.alive(armed) and processes.alive(unarmed)
        starter.kill()
        starter.wait()
        assert eventually(lambda: not processes.alive(armed))
        assert processes.alive(unarmed)  # what every server a killed run started did before
    finally:
        for pid in (armed, unarmed):
            if processes.alive(pid):
                os.kill(pid, signal.SIGKILL)
