"""``X-Served-By``: the ingress replica that answered (which one served a request, when several do); and
``X-Request-ID`` once: Ray's own middleware, outside the app, adds the request's id to every answer, so the app's
copy of that same id is dropped."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = b"x-request-id"


class ServedBy:
    def __init__(self, app: ASGIApp, replica: str):
        self.app = app
        self.header = (b"x-served-by", replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Ray gives every request an id (the client's, or one it makes) before the app sees it
        ray_adds = dict(scope["headers"]).get(REQUEST_ID)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if (n.lower(), v) != (REQUEST_ID, ray_adds)]
                message["headers"] = [*headers, self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
