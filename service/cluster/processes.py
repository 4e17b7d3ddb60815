"""The machine's processes and listening sockets, read from ``/proc`` (Linux; no psutil, which Ray does not bring):
what ``blockdrop serve --ray`` checks before it starts a cluster and stops when it ends, whether the fork server
is stopped or gone (service/fork_server.py), and what the benchmarks and tests look for in a running service."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
PR_SET_CHILD_SUBREAPER = 36
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Listener:
    pid: int
    host: str  # as bound: 0.0.0.0 or :: for every interface
    port: int

    @property
    def every_interface(self) -> bool:
        return self.host in ("0.0.0.0", "::")


def _address(hex_address: str, family: int) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # IPv4: one host-order 32-bit word; IPv6: four
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, packed), int(port, 16)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    inodes = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in (PROC / "net" / name).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN:
                    inodes[fields[9]] = _address(fields[1], family)
    return inodes


def pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def listeners(only: set[int] | None = None) -> list[Listener]:
    """Every listening TCP socket of the processes this user may inspect (of ``only``, when given)."""
    inodes = _listening_inodes()
    found = set()
    for pid in only if only is not None else pids():
        with contextlib.suppress(OSError):
            for fd in (PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        found.add(Listener(pid, *inodes[target[8:-1]]))
    return sorted(found, key=lambda listener: (listener.pid, listener.port))


def command_line(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


@dataclass(frozen=True)
class Status:
    """What the project reads of a process's ``/proc/PID/stat`` line."""

    name: str  # the command name the process gave itself (``bd:VARIANT``, ``bd-api-N``), at most 15 bytes
    state: str  # R running, S sleeping, T stopped by a signal, Z zombie, ...
    ppid: int
    cpu_seconds: float  # user + system time so far


def status(pid: int) -> Status | None:
    """``pid``'s status, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
        # the command name (field 2) may hold spaces and parentheses: the fields go on after its last ")"
        fields = text[text.rindex(")") + 2 :].split()
        return Status(
            name=text[text.index("(") + 1 : text.rindex(")")],
            state=fields[0],
            ppid=int(fields[1]),
            cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,  # utime + stime
        )
    except (OSError, IndexError, ValueError):
        return None


def parent(pid: int) -> int | None:
    return found.ppid if (found := status(pid)) else None


def alive(pid: int) -> bool:
    """Running: not gone, not a zombie waiting to be reaped."""
    return (found := status(pid)) is not None and found.state not in ("Z", "X")


def children(pid: int) -> set[int]:
    return {child for child in pids() if parent(child) == pid}


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in pids():
        ppid = parent(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def describe(pid: int) -> str:
    words = command_line(pid)
    return f"pid {pid} ({' '.join(words)[:120] or 'unknown'})"


def become_subreaper() -> None:
    """Processes orphaned below this one (a Ray worker whose raylet died, an HAProxy whose manager died) become
    its children instead of init's, so that ``stop_descendants`` still finds them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop_descendants(grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process below this one, SIGKILL what is left after ``grace_s``; the ones signalled."""
    me = os.getpid()
    targets = descendants(me)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        if not (descendants(me) & targets):
            break
        time.sleep(0.1)
    for pid in descendants(me):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:  # until every one is reaped, not left a zombie
        _reap()
        if not descendants(me):
            break
        time.sleep(0.1)
    return sorted(targets)
