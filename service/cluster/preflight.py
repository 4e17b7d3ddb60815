"""What ``blockdrop serve --ray`` checks before it starts a cluster here: that the ports it will listen on are free
and that no HAProxy of an earlier run is left behind, saying plainly what is in the way and how to clear it
(instead of Ray's traceback from deep inside its proxy actor, naming ports the user never chose)."""

from __future__ import annotations

import os

from service.cluster.processes import command_line, describe, listeners, parent, pids
from service.config import Settings
from service.port_check import CannotListen, taken_ports

HAPROXY_PREFIX = "bdhap-"  # the private directory of the HAProxy files of a cluster launch.py starts
HAPROXY_DIRECTORIES = (f"/tmp/{HAPROXY_PREFIX}", "/tmp/haproxy-serve/")  # ours, Ray's default


class StartRefused(ValueError):
    """Something on this machine stands in the way of a new cluster: the message says what and how to clear it."""


def ports(settings: Settings) -> list[tuple[str, int, str]]:
    """(host, port, what it is for) for each listener the service itself adds to the cluster it starts."""
    chosen = [(settings.host, settings.port, "the service's port, --port")]
    if settings.ray.dashboard:
        chosen.append((settings.host, settings.ray.dashboard_port, "Ray's dashboard, ray.dashboard_port"))
    if settings.ray.haproxy and settings.ray.haproxy_metrics_port:
        chosen.append((settings.host, settings.ray.haproxy_metrics_port, "HAProxy's metrics, ray.haproxy_metrics_port"))
    return [entry for entry in chosen if entry[1]]


def stale_haproxies() -> list[int]:
    """HAProxy processes of a Ray Serve run whose manager (the Ray actor that started them) is gone."""
    stale = []
    for pid in pids():
        words = command_line(pid)
        if not words or os.path.basename(words[0]) != "haproxy":
            continue
        config = words[words.index("-f") + 1] if "-f" in words[:-1] else ""
        if not any(marker in config for marker in HAPROXY_DIRECTORIES):
            continue
        manager = parent(pid)
        if manager is None or not command_line(manager)[:1] or not command_line(manager)[0].startswith("ray::"):
            stale.append(pid)
    return stale


def check(settings: Settings) -> None:
    """Raise ``StartRefused`` naming everything in the way of a cluster with ``settings``."""
    problems = []
    stale = stale_haproxies()
    if stale:
        bound = {pid: [f"{lst.host}:{lst.port}" for lst in listeners(set(stale)) if lst.pid == pid] for pid in stale}
        for pid in stale:
            problems.append(
                f"an HAProxy left behind by an earlier `blockdrop serve --ray` is still running: {describe(pid)}, "
                f"listening on {', '.join(bound[pid]) or 'nothing'}; stop it with `kill {pid}`"
            )
    try:
        problems += taken_ports(ports(settings))
    except CannotListen as error:
        raise StartRefused(str(error)) from None
    if problems:
        raise StartRefused("cannot start the Ray cluster: " + "; ".join(problems))
