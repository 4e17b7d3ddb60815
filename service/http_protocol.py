"""uvicorn's httptools protocol with the bounds it lacks: the size of a request's headers, the time to send them and
its body, and the memory of the bodies being received at once.

httptools reads a request line and headers of any size (a 128 MB header is buffered and answered) and waits for
them forever (a connection that sent half a header stays open). Here a request whose headers pass
``max_header_bytes`` gets a 431, and a connection that has not finished its headers ``header_timeout_s`` after
it opened or after its request began gets a 408; either way the connection closes. A body, too, waits forever
for its last byte, held in memory meanwhile (a hundred 10 MB bodies one byte short held a gigabyte): a body not
all there ``body_timeout_s`` after its headers gets a 408, and a body whose bytes would take the process's bodies
in progress past ``body_memory_bytes`` gets a 503 with Retry-After, both closing the connection. A request
httptools cannot parse gets a 400 the same way (uvicorn's own closes at once, which can reset the connection before
the client reads it); so does a body that fails to parse after headers that did, and the app, already running for
those headers, sees its request end as a disconnect (its answer would have gone into the ended connection). A
request the app answered before its body was all there gets no second answer: its connection just ends; one
pipelined behind requests the app is still answering gets its refusal after their answers, in order. These
answers carry a JSON error, a new ``X-Request-ID`` (also in the one warning logged) and ``X-Served-By``, as the
app's own do. A body's size is bounded by the app (``max_body_bytes``), idle keep-alive connections by uvicorn
itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.accounting import SERVED_BY_HEADER, served_by
from service.api.errors import encode_json
from service.body_budget import BodiesInProgress, body_timeout_message, over_budget_message

log = logging.getLogger(__name__)
STATUS_TEXT = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
LINGER_S = 1.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that has been answered already."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 32 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    bodies = BodiesInProgress(256 * 1024 * 1024)
    retry_after_s = 1
    count_refusal: Callable[[int], None] = staticmethod(lambda status: None)  # told the status of each refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0  # bytes received while in the headers (a partial header counts before it is parsed)
        self._parsed_header_bytes = 0  # the request line and headers parsed so far
        self._reading_headers = True
        self._headers_begun = False  # the parser has met the first byte of a request whose headers are not complete
        self._refused = False
        self._deferred: tuple[int, str, tuple[tuple[bytes, bytes], ...]] | None = None  # a refusal awaiting its turn
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0  # of the body in progress, counted in ``bodies``
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._body_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        counted = self._reading_headers
        if counted:
            self._header_bytes += len(data)
        super().data_received(data)
        # still in the headers after this chunk (a chunk that also completed them may hold body bytes: not counted)
        if counted and self._reading_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(431, f"the request's headers are larger than the {self.max_header_bytes}-byte limit")

    def send_400_response(self, msg: str) -> None:
        # (a parser error raised by our own refusal has been answered already: _refuse answers once)
        self._refuse(400, "the request could not be parsed as HTTP/1.1")

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        """Headers that arrived whole in one read are bounded here, as the parser hands them over."""
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > self.max_header_bytes:
            self._refuse(431, f"the request's headers are larger than the {self.max_header_bytes}-byte limit")
            raise _Refused

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_header_bytes = 0
        self._reading_headers = True
        self._headers_begun = True
        if self._header_timer is None:  # a new request on a kept-alive connection (the first has one since it opened)
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._headers_begun = False
        self._header_bytes = 0
        self._disarm_header_timer()
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self.bodies.add(len(body)):
            self._refuse(
                503, over_budget_message(self.bodies.limit), (b"retry-after", str(self.retry_after_s).encode())
            )
            raise _Refused
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_done()
        super().on_message_complete()
        self._reading_headers = True  # whatever comes next on this connection is the next request's headers

    def _body_done(self) -> None:
        """The body is complete or its connection gone: it no longer counts against the budget or the clock."""
        if self._body_bytes:
            self.bodies.release(self._body_bytes, self.loop)
        self._body_bytes = 0
        self._stop_body_timer()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        self._body_timer = None
        if not self._refused and not self.transport.is_closing():
            self._refuse(408, body_timeout_message(self.body_timeout_s))

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self._refused and not self.transport.is_closing():
            if self._header_bytes or self._headers_begun:  # (a request pipelined behind others counts no bytes)
                self._refuse(408, f"the request's headers did not arrive within {self.header_timeout_s:g} s")
            else:
                self.transport.close()  # a connection that never sent a byte gets no answer

    def _refuse(self, status: int, message: str, *headers: tuple[bytes, bytes]) -> None:
        if self.transport.is_closing() or self._refused:
            return
        self.count_refusal(status)
        in_headers = self._reading_headers
        self._refused = True  # nothing more is read from this connection
        self._reading_headers = False
        self._disarm_header_timer()
        # Its bytes stay counted until the connection is lost: until then the app's handler still holds what it
        # received (released at once, the budget let a hundred refused bodies hold 2.7x it).
        self._stop_body_timer()
        cycle = self.cycle
        if in_headers and (self.pipeline or (cycle is not None and not cycle.response_complete)):
            # a request pipelined behind others the app is still answering: its refusal is its answer, so it
            # follows theirs (on_response_complete); written now, a client would take it for the first one's
            self._deferred = (status, message, headers)
            return
        if not in_headers and cycle is not None and cycle.response_started:
            # the app answered this request before its body was all there (a 404, say): a second answer would be
            # read as the answer to the client's next request; the connection just ends
            log.warning("closed a connection after the app's answer: %s", message)
        else:
            self._answer(status, message, headers)
        self._end(cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        deferred = self._deferred
        cycle = self.cycle  # (the newest request's; the pipeline holds those not started yet)
        if deferred is not None and not self.pipeline and (cycle is None or cycle.response_complete):
            self._deferred = None
            if not self.transport.is_closing():  # (a request the app answered with ``Connection: close``)
                self._answer(*deferred)
                self._end(cycle)

    def _end(self, cycle: RequestResponseCycle | None) -> None:
        """After a refusal: the app's request in progress ends, then the connection."""
        # the app may be running already, for headers that parsed before the body did not: its request ends as a
        # disconnect (as when the connection is lost), and whatever it answers is dropped, not written after ours
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        # A lingering close: end our side after the answer, then read and drop what the client still sends for a
        # moment. Closing with its bytes unread would reset the connection, and a reset can destroy the answer
        # before the client reads it.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _answer(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        request_id = uuid.uuid4().hex
        log.warning("answered %d before the app (request %s): %s", status, request_id, message)
        body = encode_json({"error": message})
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, STATUS_TEXT[status]),
            *(b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id.encode(),
            b"%s: %s\r\n" % (SERVED_BY_HEADER.encode(), served_by().encode()),
            *(b"%s: %s\r\n" % header for header in headers),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)


PARSER_WARNING = "Invalid HTTP request received."  # (uvicorn's httptools protocol, data_received)


class _WithoutParserWarning(logging.Filter):
    """Drops uvicorn's own warning for a request it cannot parse: the 400 logs one, with the request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != PARSER_WARNING


_without_parser_warning = _WithoutParserWarning()


def bounded_protocol(
    max_header_bytes: int,
    header_timeout_s: float,
    body_timeout_s: float = 30.0,
    body_memory_bytes: int = 256 * 1024 * 1024,
    retry_after_s: int = 1,
    count_refusal: Callable[[int], None] | None = None,
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with these bounds (its connections share one body budget);
    ``count_refusal`` is told the status of each refusal (the app's metrics count them)."""
    logging.getLogger("uvicorn.error").addFilter(_without_parser_warning)  # (adding it again changes nothing)
    return type(
        "BoundedHttpTools",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "bodies": BodiesInProgress(body_memory_bytes),
            "retry_after_s": retry_after_s,
            **({"count_refusal": staticmethod(count_refusal)} if count_refusal is not None else {}),
        },
    )
