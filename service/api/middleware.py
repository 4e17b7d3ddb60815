"""Pure ASGI middleware: the body-size limit (413 before the body is all read), bodies sent as they are (415 for a
content coding), WebSocket handshakes refused plainly (404), HEAD wherever GET is served, and per-request metrics."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.accounting import ACCOUNT, ECHOED_HEADERS, RequestAccount, served_by_headers
from service.api.errors import encode_json
from service.errors import PayloadTooLarge
from service.metrics import ServiceMetrics
from service.numbers import longer_than
from service.request_log import request_id_from

INFERENCE_PATHS = ("/v1/classify", "/v2/models/")


async def _send_error(send: Send, status: int, message: str, *headers: tuple[bytes, bytes]) -> None:
    body = encode_json({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``: at once from Content-Length, else as soon as the stream passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than the {self.max_bytes}-byte limit"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and longer_than(declared, self.max_bytes):
            await _send_error(send, 413, message)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(message)
            return incoming

        async def tracking_send(outgoing: Message) -> None:
            nonlocal started
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if not started:
                await _send_error(send, 413, message)


class IdentityBodiesOnly:
    """Refuse a request whose body comes in a content coding (``Content-Encoding: gzip``, …): no route decodes one,
    and read as it is, a compressed image would be answered "not an image" and a compressed JSON body "not JSON".
    415 with ``Accept-Encoding: identity``, as HTTP has a server say which codings it takes (RFC 9110, 15.5.16)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            codings = [value for name, value in scope["headers"] if name == b"content-encoding"]
            coding = b",".join(codings).decode("latin-1").strip().lower()
            if coding not in ("", "identity"):
                message = f"Content-Encoding {coding[:40]!r} is not supported: send the body as it is, uncompressed"
                await _send_error(send, 415, message, (b"accept-encoding", b"identity"))
                return
        await self.app(scope, receive, send)


class HeadAsGet:
    """Answer HEAD wherever GET is served: the GET answer's status and headers, without its body (RFC 9110 asks it of
    every general-purpose server; ``curl -I`` and some monitors probe that way). FastAPI's routes take only the
    methods they name, so HEAD got a 405. A path that takes no GET still gets the router's 405 or 404 for HEAD."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]):
        self.app = app
        self.routes = routes  # the router's own list: routes added later are in it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET"}
        if not any(route.matches(as_get)[0] == Match.FULL for route in self.routes):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}  # Content-Length stays the GET answer's, as HEAD has it
            await send(message)

        await self.app(as_get, receive, headers_only)


class NoWebSockets:
    """Refuse a WebSocket handshake with a 404 and the service's JSON error: it serves no WebSocket. (Left to the
    framework, a handshake got a 403 with an empty body, which says nothing of why.)"""

    def __init__(self, app: ASGIApp, served_by: str | None = None):
        self.app = app
        self.fixed_headers = served_by_headers(served_by)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        await receive()  # the handshake ("websocket.connect")
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # a server that cannot say more
            return
        path = scope.get("path", "")[:100]
        body = encode_json({"error": f"no WebSocket at {path}: the service answers plain HTTP; its API is at /docs"})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        request_id = request_id_from(header(scope, b"x-request-id"))  # what every other answer carries
        headers += [(b"x-request-id", request_id.encode()), *self.fixed_headers]
        await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})


class RequestMetrics:
    """Give every HTTP request an id (the client's ``X-Request-ID`` or a new one, echoed in the response) and the
    ``X-Served-By`` header (when given ``served_by``); and give each inference request its account (in the scope's
    state, for the route to note its variant on), finished once the answer has gone: counted by variant and
    status, timed end to end, logged."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, served_by: str | None = None):
        self.app = app
        self.metrics = metrics
        self.fixed_headers = served_by_headers(served_by)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered_id = header(scope, b"x-request-id")
        path = scope.get("path", "")
        state = scope.setdefault("state", {})
        account = None
        if path.startswith(INFERENCE_PATHS) and scope.get("method") == "POST":
            account = state[ACCOUNT] = RequestAccount.open(self.metrics, offered_id, "http", path)
            request_id = account.request_id
        else:
            request_id = request_id_from(offered_id)
        # also for the 500 that Starlette's outermost layer sends on an unhandled error (service/api/errors.py)
        echoed = state[ECHOED_HEADERS] = [(b"x-request-id", request_id.encode()), *self.fixed_headers]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if account is not None:
                    account.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *echoed]}
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if account is not None:
                account.finish()


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), if the request has it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
