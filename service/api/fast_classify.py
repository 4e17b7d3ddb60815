"""A pure-ASGI answer to the request the service sees most: ``POST /v1/classify`` with the raw image as the body.

FastAPI's routing, dependency solving, request objects and middleware layers cost the event loop more than
decoding the image does; this path goes straight from the ASGI scope to the data plane and back, with the same
limits, errors, metrics and JSON bytes as the FastAPI route (which stays the documented route and answers
everything else: multipart and JSON bodies, and any query it does not parse as plainly as FastAPI would).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from service.accounting import RequestAccount, served_by_headers
from service.api.choice import RAW_HEADERS, choose_variant
from service.api.errors import CLIENT_LEFT, encode_json
from service.dataplane import DataPlane
from service.errors import PayloadTooLarge, ServiceError
from service.metrics import ServiceMetrics
from service.numbers import longer_than, whole_number

log = logging.getLogger(__name__)

PATH = "/v1/classify"
RAW_TYPES = ("", "application/octet-stream")
QUERY_KEYS = frozenset({"variant", "top_k", "budget"})


def parse_query(query_string: bytes) -> dict[str, str] | None:
    """``variant``, ``budget`` and ``top_k`` (a positive whole number) when that is all the query holds, each once;
    else None
    (the FastAPI route answers, with its own validation messages)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs) or not query.keys() <= QUERY_KEYS:
        return None
    top_k = query.get("top_k")
    if top_k is not None and not (whole_number(top_k) or 0) >= 1:
        return None  # FastAPI's validation answers (a 422), whatever the value: huge, negative, not a number
    return query


class FastClassify:
    def __init__(
        self,
        app: ASGIApp,
        plane: Callable[[], DataPlane],
        metrics: ServiceMetrics,
        max_body_bytes: int,
        served_by: str | None = None,
    ):
        """``served_by``: the ``X-Served-By`` every answer carries (none without it)."""
        self.app = app
        self.plane = plane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.fixed_headers = served_by_headers(served_by)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self._claim(scope)
        if request is None:
            await self.app(scope, receive, send)
            return
        query, headers = request
        account = RequestAccount.open(self.metrics, headers.get(b"x-request-id"), "http", PATH)
        try:
            body = await self._read_body(headers, receive)
            plane = self.plane()
            chosen, budget = choose_variant(plane, account, query.get, headers.get, names=RAW_HEADERS)
            top_k = int(query["top_k"]) if "top_k" in query else 1
            results = await plane.classify(chosen, [body], top_k, budget)
            status, payload, extra = 200, encode_json(results[0]), {}
        except ServiceError as error:
            status, payload, extra = error.status_code, encode_json({"error": error.message}), error.headers
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            status, payload, extra = 500, encode_json({"error": "internal error; the service logged the details"}), {}
        if status == 413:
            extra = extra | {"connection": "close"}  # the unread rest of the body must not be taken as a request
        await _respond(send, status, payload, extra | {"x-request-id": account.request_id}, self.fixed_headers)
        account.status = status
        account.finish()

    def _claim(self, scope: Scope) -> tuple[dict[str, str], dict[bytes, str]] | None:
        """The query and headers of a request this path answers, or None to hand it to FastAPI."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            return None
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in headers and (name in RAW_HEADERS or name == b"content-type"):
                return None  # repeated: leave the choice of which one counts to FastAPI
            headers[name] = value.decode("latin-1")
        content_type = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if not (content_type.startswith("image/") or content_type in RAW_TYPES) or b"content-encoding" in headers:
            return None  # a content coding: refused by IdentityBodiesOnly (service/api/middleware.py)
        query = parse_query(scope.get("query_string", b""))
        return None if query is None else (query, headers)

    async def _read_body(self, headers: dict[bytes, str], receive: Receive) -> bytes:
        too_large = PayloadTooLarge(f"the request body is larger than the {self.max_body_bytes}-byte limit")
        if longer_than(headers.get(b"content-length", ""), self.max_body_bytes):
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServiceError(CLIENT_LEFT, 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _respond(
    send: Send, status: int, payload: bytes, extra: dict[str, str], fixed: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    headers += fixed
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
