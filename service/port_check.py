"""Whether the ports a start will listen on are free, and if not, who holds them: said in one line before any
server starts, in place of a bind error from deep inside one (uvicorn's, gRPC's, Ray's proxy's)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from service.cluster.processes import describe, listeners

Port = tuple[str, int, str]  # host, port, what it is for (as the user chose it: "the service's port, --port")


class CannotListen(ValueError):
    """A port the service is to listen on is taken or cannot be had: the message says which, and why."""


def port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no clash
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise CannotListen(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return False


def taken_ports(ports: Iterable[Port]) -> list[str]:
    """A line for each of ``ports`` that is taken, naming the processes that hold it."""
    problems = []
    for host, port, what in ports:
        if port and port_taken(host, port):
            owners = sorted({lst.pid for lst in listeners() if lst.port == port})
            by = ", ".join(describe(pid) for pid in owners) or "a process this user cannot see"
            problems.append(f"port {port} on {host} ({what}) is taken by {by}; stop it or choose another port")
    return problems


def check_ports(ports: Iterable[Port]) -> None:
    """Raise ``CannotListen`` naming every one of ``ports`` that is taken."""
    problems = taken_ports(ports)
    if problems:
        raise CannotListen("; ".join(problems))
