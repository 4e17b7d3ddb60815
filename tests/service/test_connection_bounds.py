"""What the HTTP server bounds before the application sees a request: the size of the headers (431), the time to
send them (408), requests it cannot parse (400), each answered like the app's errors (JSON, X-Request-ID,
X-Served-By); and the pre-stop period after SIGTERM, in which readiness is 503 while requests are still served."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.common import metric_samples
from service.body_budget import BodiesInProgress
from service.libc import release_free_memory
from tests.service.conftest import metric, png_bytes
from tests.service.live_server import Server


@pytest.fixture(scope="module")
def variants(artifacts) -> list[dict]:
    return [
        {"name": "blockdrop", "artifact": str(artifacts["tiny-blockdrop"]), "mode": "blockdrop"},
        {"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full"},
    ]


@pytest.fixture(scope="module")
def server(variants):
    running = Server(
        variants,
        max_header_bytes=16384,
        header_timeout_s=1,
        body_timeout_s=2,
        body_memory_mb=1,
        inference_workers="thread",
    )
    yield running
    assert running.stop()


def _exchange(port: int, payload: bytes, wait_s: float = 10) -> bytes:
    """Send ``payload`` and read until the server closes the connection (or ``wait_s`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        connection.sendall(payload)
        received = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def _refusal(answer: bytes, status: int) -> str:
    """The error message of an answer the server gave before the app, after checking it is one like the app's."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    headers = dict(line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert re.fullmatch(r"api-0/\d+", headers["x-served-by"])
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    return json.loads(body)["error"]


def test_headers_over_the_limit_get_a_431_and_a_closed_connection(server):
    big = b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = _exchange(server.port, big)
    assert "16384-byte limit" in _refusal(answer, 431)
    # many headers, each small, add up the same way
    many = b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(400)
    )
    assert _exchange(server.port, many + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_headers_under_the_limit_and_a_large_body_are_served(server):
    body = png_bytes((512, 512))  # arrives with the headers in one read: body bytes are not header bytes
    response = httpx.post(
        f"{server.url}/v1/classify", content=body, headers={"content-type": "image/png", "x-pad": "p" * 8000}
    )
    assert response.status_code == 200


def test_a_connection_that_does_not_finish_its_headers_is_closed_with_a_408(server):
    started = time.monotonic()
    answer = _exchange(server.port, b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait_s=15)
    assert "did not arrive within 1 s" in _refusal(answer, 408)
    assert time.monotonic() - started < 10  # the 1 s header timeout, not the 15 s the client was ready to wait
    # a connection that never sends a byte is closed too, without an answer
    assert _exchange(server.port, b"", wait_s=15) == b""
    # and a kept-alive connection still serves several requests
    with httpx.Client(base_url=server.url) as client:
        assert [client.get("/healthz/live").status_code for _ in range(3)] == [200] * 3


def _post_head(length: int) -> bytes:
    return b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % length


def test_a_body_that_does_not_arrive_in_time_is_closed_with_a_408(server):
    """A body one byte short was held, and its memory with it, for as long as the client liked."""
    started = time.monotonic()
    answer = _exchange(server.port, _post_head(1000) + png_bytes()[:100], wait_s=15)
    assert "body did not arrive within 2 s" in _refusal(answer, 408)
    assert time.monotonic() - started < 10


def test_bodies_past_the_memory_budget_get_a_503_and_the_budget_comes_back(server):
    """A hundred 10 MB bodies one byte short held a gigabyte; now the bodies in progress share one budget (1 MiB
    here), past which a body is refused at once, and what a closed connection held counts no more."""
    with socket.create_connection(("127.0.0.1", server.port)) as holding:
        holding.sendall(_post_head(1_000_000) + b"\0" * 700_000)  # in progress: 700 kB of the budget
        time.sleep(0.3)
        answer = _exchange(server.port, _post_head(1_000_000) + b"\0" * 400_000)
        assert "BODY_MEMORY_MB" in _refusal(answer, 503)
        assert b"\r\nretry-after: 1\r\n" in answer.lower()
    time.sleep(0.3)
    body = png_bytes((512, 512))  # about 790 kB: fits once the held one is gone
    assert len(body) > 1_048_576 - 700_000
    response = httpx.post(f"{server.url}/v1/classify", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 200


def test_a_refused_body_counts_against_the_budget_until_its_connection_is_closed(server):
    """The app's handler holds what a refused body sent until the connection goes (a second after the answer).
    Released at the refusal, the budget let a hundred refused 10 MB bodies hold 2.7 times it."""
    with socket.create_connection(("127.0.0.1", server.port)) as holding:
        holding.sendall(_post_head(1_000_000) + b"\0" * 700_000)  # in progress: 700 kB of the 1 MiB budget
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as refused:
            refused.sendall(_post_head(1_000_000) + b"\0" * 400_000)  # refused past the budget, kept open
            assert refused.recv(65536).startswith(b"HTTP/1.1 503 ")
            # 200 kB would fit beside the held body alone, not beside what the refused one still holds
            answer = _exchange(server.port, _post_head(200_000) + b"\0" * 200_000)
            assert "BODY_MEMORY_MB" in _refusal(answer, 503)
        time.sleep(1.5)  # the refused connection is gone: what it held counts no more
        answer = _exchange(server.port, _post_head(200_000) + b"\0" * 200_000)
        assert answer.startswith(b"HTTP/1.1 415 "), answer[:200]  # not an image, but read whole


def test_the_heap_is_trimmed_once_large_bodies_in_progress_are_all_done():
    """glibc keeps the pages bodies were freed into (523 MiB above idle after a hundred 10 MB bodies, in bench
    hostile): once none is in progress after large ones, they are handed back, off the event loop."""
    scheduled = []

    class Loop:
        def call_later(self, delay, callback, *args):
            scheduled.append((callback, args))

        def run_in_executor(self, executor, function):  # what call_later is given to call
            raise AssertionError("not called here")

    mib = 1024 * 1024
    bodies = BodiesInProgress(100 * mib)
    assert bodies.add(40 * mib) and bodies.add(1)
    bodies.release(1, Loop())
    assert scheduled == []  # 40 MiB still in progress
    bodies.release(40 * mib, Loop())
    assert len(scheduled) == 1 and scheduled[0][1][1] is release_free_memory
    assert bodies.add(1000)
    bodies.release(1000, Loop())
    assert len(scheduled) == 1  # small bodies alone never trim
    assert not bodies.add(101 * mib)  # past the limit


def test_a_request_that_is_not_http_gets_a_400_and_a_closed_connection(server):
    assert "could not be parsed" in _refusal(_exchange(server.port, b"\x16\x03\x01 TLS hello?\r\n\r\n"), 400)
    assert "could not be parsed" in _refusal(_exchange(server.port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400)
    with httpx.Client(base_url=server.url) as client:  # and the server serves on
        assert client.get("/healthz/live").status_code == 200


def test_a_request_that_breaks_off_after_its_headers_is_refused_without_an_error_logged(server):
    """Headers that parse, then a body that does not (a bad chunk size): the app was already running for those
    headers, and its answer went into the connection the 400 had ended, logged as an unhandled error twice over,
    with tracebacks. Now the app's request ends as a disconnect, and the one warning logged is the 400's own."""
    bad_chunk = b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n"
    for request_line in (b"GET / HTTP/1.1", b"GET /v1/models HTTP/1.1", b"POST /v1/classify HTTP/1.1"):
        before = server.logged()
        answer = _exchange(server.port, request_line + b"\r\nHost: x\r\nContent-Type: image/png\r\n" + bad_chunk)
        assert "could not be parsed" in _refusal(answer, 400)
        time.sleep(0.3)  # the app's answer to those headers, if any, lands meanwhile
        logged = server.logged()[len(before) :].splitlines()
        assert len(logged) == 1 and "answered 400 before the app" in logged[0], (request_line, logged)
    with httpx.Client(base_url=server.url) as client:  # and the server serves on
        assert client.get("/healthz/live").status_code == 200


def test_a_client_that_leaves_in_the_middle_of_its_body_is_no_service_error(server):
    """A client that went away before its whole body arrived (or whose body ran out of time) made every endpoint
    that reads its body through Starlette raise ``ClientDisconnect``: logged as an unhandled error, with its
    traceback, and counted as a 500 in the metrics that alerts and rollout guardrails read."""
    bodies = [  # (the fast path for raw images has its own read, checked too)
        (b"/v2/models/full/infer", b"application/json", b'{"inputs": [{"name": "images"'),
        (b"/v1/classify", b"multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data"),
        (b"/v1/classify", b"image/png", png_bytes()[:50]),
    ]
    heads = [
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 1000\r\n\r\n%s" % body for body in bodies
    ]
    before = server.logged()
    for head in heads:
        with socket.create_connection(("127.0.0.1", server.port)) as leaving:
            leaving.sendall(head)
            time.sleep(0.3)  # the app is reading the body when the client leaves
    # and clients that stay, silent, until the body timeout's 408 ends them (side by side: 2 s in all)
    with ThreadPoolExecutor(len(heads)) as pool:
        for answer in pool.map(lambda head: _exchange(server.port, head), heads):
            assert "body did not arrive within 2 s" in _refusal(answer, 408)
    time.sleep(0.5)
    logged = server.logged()[len(before) :]
    assert "Traceback" not in logged and '"level": "error"' not in logged, logged
    metrics = httpx.get(f"{server.url}/metrics").text
    statuses = [labels["status"] for labels, _ in metric_samples(metrics, "blockdrop_requests_total")]
    assert not [status for status in statuses if status.startswith("5")], metrics


def _refusals(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        status: metric(text, "blockdrop_http_refusals_total", status=status) for status in ("400", "408", "431", "503")
    }


def test_a_body_that_stalls_after_the_app_answered_ends_the_connection_without_a_second_answer(server):
    """The app may answer before a body is all there (a 404, a health check). When the rest of the body then
    did not come in time, a 408 followed the app's answer on the same connection, where a client reads it as
    the answer to its next request; now the connection just ends. Counted all the same."""
    before = _refusals(server)

    def stall(request_line: bytes) -> tuple[float, bytes]:
        started = time.monotonic()
        answer = _exchange(server.port, request_line + b"\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", 15)
        return time.monotonic() - started, answer

    with ThreadPoolExecutor(2) as pool:
        for took, answer in pool.map(stall, (b"GET /healthz/live HTTP/1.1", b"POST /nowhere HTTP/1.1")):
            assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 404 ")), answer
            assert took < 10  # closed at the 2 s body timeout
    assert _refusals(server)["408"] - before["408"] == 2


def test_a_refused_request_pipelined_behind_a_good_one_is_answered_after_it(server):
    """A refusal was written the moment the parser met the bad request, before the app had answered the good one
    pipelined ahead of it on the same connection: the client read it as the good request's answer, whose own
    answer was lost. Now each gets its own, in order."""
    good = b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n\r\n"
    for bad, status in (
        (b"\x16\x03\x01 TLS hello?\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", 408),
    ):
        answer = _exchange(server.port, good + good + bad)
        statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]  # (a body ends unterminated)
        assert statuses == [200, 200, status], (status, answer)


def test_each_answer_given_before_the_app_is_counted_by_status(server):
    """Nothing but the warning log said that the server refused requests before the app (a flood of slow or
    malformed ones, say); now a counter by status does."""
    before = _refusals(server)
    _exchange(server.port, b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n")
    _exchange(server.port, b"\x16\x03\x01 TLS hello?\r\n\r\n")
    _exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    _exchange(server.port, b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait_s=15)
    after = _refusals(server)
    grew = {status: after[status] - before[status] for status in after}
    assert {status: n for status, n in grew.items() if n} == {"431": 1, "400": 2, "408": 1}


def test_sigterm_turns_readiness_off_for_the_pre_stop_period_while_requests_are_served(variants):
    server = Server(variants, prestop_s=3, inference_workers="thread")
    server.process.send_signal(signal.SIGTERM)
    seen_not_ready, served = False, 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        ready = httpx.get(f"{server.url}/healthz/ready", timeout=5)
        seen_not_ready = seen_not_ready or ready.status_code == 503
        answer = httpx.post(
            f"{server.url}/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}, timeout=5
        )
        assert answer.status_code == 200, answer.text
        served += 1
        time.sleep(0.1)
    assert seen_not_ready and served >= 5
    assert server.exited_cleanly()
