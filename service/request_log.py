"""One structured log line per inference request, and the request id that ties it to the client.

Every protocol layer opens a ``RequestRecord`` when a request arrives (its id from ``X-Request-ID`` or gRPC
metadata ``x-request-id`` when the client sent a usable one, else a new one) and writes it when the answer has
gone; the data plane adds what it ran (variant, images, blocks, FLOPs) to the record of the request in hand.
The client's sticky key is logged only as a short hash. Building the line costs a few microseconds; with the
``blockdrop.requests`` logger above INFO it is not built at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
_USABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_log = logging.getLogger("blockdrop.requests")
_current: ContextVar[RequestRecord | None] = ContextVar("blockdrop_request", default=None)


def request_id_from(offered: str | None) -> str:
    """The client's id when it is a plain token of at most 128 characters, else a new one."""
    if offered and _USABLE_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def hashed(key: str | None) -> str | None:
    """A short, stable stand-in for a client key: enough to group a client's requests, not to recover the key."""
    return None if key is None else hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class RequestRecord:
    request_id: str
    protocol: str  # http | grpc
    route: str
    started: float = field(default_factory=time.monotonic)
    client: str | None = None  # hashed
    variant: str | None = None
    images: int = 0
    blocks_used: int = 0
    flops: int = 0

    def add_results(self, variant: str, blocks_used: int, flops: int, images: int) -> None:
        self.variant = variant
        self.images += images
        self.blocks_used += blocks_used
        self.flops += flops

    def line(self, status: int | str) -> dict[str, Any]:
        return {
            "event": "inference",
            "request_id": self.request_id,
            "protocol": self.protocol,
            "route": self.route,
            "status": status,
            "latency_ms": round((time.monotonic() - self.started) * 1000, 3),
            "variant": self.variant,
            "images": self.images,
            "blocks_used": self.blocks_used,
            "flops": self.flops,
            "client": self.client,
        }


def open_record(request_id: str, protocol: str, route: str, client_key: str | None = None) -> RequestRecord | None:
    """The request's record, now the one in hand; None (and nothing gathered for it) while request lines are off."""
    record = None
    if request_log.isEnabledFor(logging.INFO):
        record = RequestRecord(request_id, protocol, route, client=hashed(client_key))
    _current.set(record)
    return record


def current_record() -> RequestRecord | None:
    return _current.get()


def detach_record() -> None:
    """Forget the request in hand, in a task that outlives it (a shadow run)."""
    _current.set(None)


def write_record(record: RequestRecord | None, status: int | str) -> None:
    if record is not None:
        fields = record.line(status)
        request_log.info("inference %s", fields, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's fields where it has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry |= fields
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str, level: str) -> None:
    """The root logger's handler: JSON lines or plain text, at ``level``."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
