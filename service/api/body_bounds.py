"""The body bounds of ``service/http_protocol.py`` for a server that is not ours: Ray Serve runs each ingress
replica's own uvicorn, behind HAProxy, and neither bounds the time a body takes or the memory of the bodies being
received at once (HAProxy bounds the headers: the shim sets its ``timeout http-request``).

Here, at the ASGI layer, a body not all there ``timeout_s`` after its request began gets a 408, and a body whose
bytes would take the process's bodies in progress past the budget gets a 503 with Retry-After; both answer with
``Connection: close`` (the rest of the body must not be read as a request) and raise from the app's ``receive``, so
the route or fast path reading the body answers them as any other error. A body counts until its request is done.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.body_budget import BodiesInProgress, body_timeout_message, over_budget_message
from service.errors import ServiceError


class BodyBounds:
    def __init__(self, app: ASGIApp, timeout_s: float, budget_bytes: int, retry_after_s: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.bodies = BodiesInProgress(budget_bytes)
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        counted = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal counted, complete
            if complete:  # the body is in: what follows is waiting for a disconnect, which may take any time
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ServiceError(body_timeout_message(self.timeout_s), 408, {"Connection": "close"}) from None
            if message["type"] != "http.request":
                complete = True
                return message
            size = len(message.get("body", b""))
            counted += size
            complete = not message.get("more_body", False)
            if not self.bodies.add(size):
                raise ServiceError(
                    over_budget_message(self.bodies.limit),
                    503,
                    {"Retry-After": str(self.retry_after_s), "Connection": "close"},
                )
            return message

        try:
            await self.app(scope, bounded_receive, send)
        finally:
            if counted:
                self.bodies.release(counted, loop)
