"""The body bounds for a server that is not ours (a Ray ingress replica's uvicorn): at the ASGI layer, a body
that stalls gets a 408 and bodies past the memory budget a 503 with Retry-After, both with ``Connection: close``
and the service's JSON error; a body counts until its request is done."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api.body_bounds import BodyBounds
from service.api.errors import install_error_handlers


def bounded_app(timeout_s: float = 0.3, budget_bytes: int = 1000) -> BodyBounds:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    @app.post("/then-wait")
    async def then_wait(request: Request) -> JSONResponse:
        size = len(await request.body())
        # as a streaming answer listens for the client going away: not a body, so not on the body's clock
        await request.receive()
        return JSONResponse({"bytes": size})

    return BodyBounds(app, timeout_s=timeout_s, budget_bytes=budget_bytes, retry_after_s=2)


class Exchange:
    """One request driven by hand: its body's chunks fed when the test likes, its answer collected."""

    def __init__(self, app: BodyBounds, path: str = "/echo") -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
        scope |= {"http_version": "1.1", "scheme": "http", "server": ("test", 80), "root_path": ""}
        self.task = asyncio.create_task(app(scope, self.incoming.get, self._send))

    async def _send(self, message: dict) -> None:
        self.sent.append(message)

    def chunk(self, data: bytes, more: bool = True) -> None:
        self.incoming.put_nowait({"type": "http.request", "body": data, "more_body": more})

    async def answer(self) -> tuple[int, dict[str, str], dict]:
        await asyncio.wait_for(self.task, 5)
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], headers, json.loads(body)


def test_a_body_sent_in_time_is_served_and_stops_counting():
    async def scenario() -> None:
        app = bounded_app()
        exchange = Exchange(app)
        exchange.chunk(b"a" * 400)
        await asyncio.sleep(0.1)
        assert app.bodies.held == 400  # in progress: counted
        exchange.chunk(b"b" * 500, more=False)
        status, headers, body = await exchange.answer()
        assert (status, body, "connection" in headers) == (200, {"bytes": 900}, False)
        assert app.bodies.held == 0

    asyncio.run(scenario())


def test_a_body_that_stalls_gets_a_408_and_a_closed_connection():
    async def scenario() -> None:
        app = bounded_app(timeout_s=0.3)
        exchange = Exchange(app)
        exchange.chunk(b"a" * 100)  # and nothing more
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, headers, body = await exchange.answer()
        assert (status, headers["connection"]) == (408, "close")
        assert body == {"error": "the request's body did not arrive within 0.3 s of its headers"}
        assert 0.25 < loop.time() - started < 2
        assert app.bodies.held == 0

    asyncio.run(scenario())


def test_bodies_past_the_budget_get_a_503_with_retry_after_and_the_held_one_is_served():
    async def scenario() -> None:
        app = bounded_app(budget_bytes=1000)
        held = Exchange(app)
        held.chunk(b"a" * 700)
        await asyncio.sleep(0.05)
        refused = Exchange(app)
        refused.chunk(b"b" * 400)
        status, headers, body = await refused.answer()
        assert (status, headers["retry-after"], headers["connection"]) == (503, "2", "close")
        assert "1000-byte budget (BODY_MEMORY_MB)" in body["error"]
        assert app.bodies.held == 700  # the refused body's bytes went with its request
        held.chunk(b"a" * 100, more=False)
        assert (await held.answer())[2] == {"bytes": 800}
        assert app.bodies.held == 0

    asyncio.run(scenario())


def test_waiting_after_the_body_is_not_on_the_bodys_clock():
    async def scenario() -> None:
        app = bounded_app(timeout_s=0.2)
        exchange = Exchange(app, "/then-wait")
        exchange.chunk(b"a" * 10, more=False)
        await asyncio.sleep(0.5)  # past the body timeout, the handler still waiting on receive
        assert not exchange.task.done()
        exchange.incoming.put_nowait({"type": "http.disconnect"})
        assert (await exchange.answer())[:1] == (200,)

    asyncio.run(scenario())
