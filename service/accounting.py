"""One account per inference request, whichever entry point takes it (the pure-ASGI fast path, the HTTP middleware
in front of the v1/v2 routes, gRPC): its id, its log line, the variant it ran on, its status and its clock; and,
when it is finished, the request counted by variant and status, timed (when a variant was chosen) and logged.

The entry point opens the account and sets ``status``; whatever chooses the variant (``service/api/choice.py``)
notes it in ``variant``. A FastAPI route finds its request's account in the ASGI scope's state, where
``RequestMetrics`` puts it (``account_in(request.scope)``).

``served_by()`` is the name every answer carries (``X-Served-By``, gRPC metadata ``x-served-by``): the process's
``BLOCKDROP_API_SERVER_NAME`` (``api-0`` by default) and its pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.request_log import open_record, request_id_from, write_record

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics
    from service.request_log import RequestRecord

SERVED_BY_HEADER = "x-served-by"
SERVER_NAME_ENV = "BLOCKDROP_API_SERVER_NAME"
# the ASGI scope's state: the request's account (inference requests), and the headers every HTTP answer gets
ACCOUNT = "account"
ECHOED_HEADERS = "echoed_headers"


_CURRENT: ContextVar[RequestAccount | None] = ContextVar("blockdrop_request_account", default=None)


def current_account() -> RequestAccount | None:
    """The account of the inference request this task serves (None outside one): the data plane reads its clock."""
    return _CURRENT.get()


def account_in(scope: Mapping[str, Any]) -> RequestAccount | None:
    """The account ``RequestMetrics`` opened for this HTTP request's ASGI scope; None for one it does not count."""
    return scope.get("state", {}).get(ACCOUNT)


def served_by() -> str:
    """``NAME/PID``: this process's server name and pid. Read when an app or a gRPC server is made (not at import),
    so that a process started later with its own name shows it."""
    return f"{os.environ.get(SERVER_NAME_ENV) or 'api-0'}/{os.getpid()}"


def served_by_headers(name: str | None) -> list[tuple[bytes, bytes]]:
    """The raw ``X-Served-By`` header an ASGI answer adds for ``name`` (none without one)."""
    return [(SERVED_BY_HEADER.encode(), name.encode())] if name else []


@dataclass(slots=True)
class RequestAccount:
    metrics: ServiceMetrics
    request_id: str
    record: RequestRecord | None  # None while request lines are off
    started: float
    variant: str = "none"  # until one is chosen
    status: int = 500  # until the entry point knows better

    @classmethod
    def open(cls, metrics: ServiceMetrics, offered_id: str | None, protocol: str, route: str) -> RequestAccount:
        """Start the clock; the request's id is the client's ``offered_id`` when it is usable, else a new one; its
        log record becomes the one in hand (``service.request_log.current_record``), and the account too
        (``current_account``)."""
        started = time.monotonic()
        request_id = request_id_from(offered_id)
        account = cls(metrics, request_id, open_record(request_id, protocol, route), started)
        _CURRENT.set(account)
        return account

    def finish(self) -> None:
        """Count the request by variant and status, time it when a variant was chosen, and write its log line."""
        variant = self.variant
        self.metrics.requests.labels(variant, str(self.status)).inc()
        if variant != "none":
            self.metrics.latency.labels(variant).observe(time.monotonic() - self.started)
            if self.record is not None and self.record.variant is None:  # chosen, refused before it ran (a 503)
                self.record.variant = variant
        write_record(self.record, self.status)
