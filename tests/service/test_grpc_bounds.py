"""The gRPC server's bounds (service/api/grpc_bounds.py) on a real server process, driven with raw HTTP/2 frames:
a ModelInfer whose message is sent all but its last byte is held only while there is room for it, the rest are
refused at once, a connection is closed once its life is up (and with it what it held), and a message larger than
any request can be is refused from its length prefix. Before, forty such messages of 10 MB held 412 MiB for as
long as their clients liked."""

from __future__ import annotations

import time

import grpc
import pytest

from bench.stalled_grpc import StalledCall, small_infer, wait_until_closed
from service.api.grpc_bounds import BYTES_PER_VALUE, MESSAGE_OVERHEAD_BYTES, grpc_bounds
from service.config import Settings
from tests.service.live_server import Server, exchange_until_closed

MIB = 1024 * 1024


def test_the_bounds_follow_the_largest_request_and_the_body_budget():
    settings = Settings(max_body_bytes=10 * MIB, body_memory_mb=256, body_timeout_s=30, request_timeout_s=10)
    bounds = grpc_bounds(settings, max_tensor_values=64 * 3 * 32 * 32)
    assert bounds.max_message_bytes == BYTES_PER_VALUE * 64 * 3 * 32 * 32 + MESSAGE_OVERHEAD_BYTES == MIB
    assert bounds.max_concurrent_rpcs == 256
    options = dict(bounds.options)
    assert options["grpc.max_receive_message_length"] == MIB
    assert (options["grpc.max_connection_age_ms"], options["grpc.max_connection_age_grace_ms"]) == (30_000, 10_000)
    # a model so large that its requests would pass MAX_BODY_BYTES: that stays the limit
    assert grpc_bounds(settings, max_tensor_values=64 * 3 * 512 * 512).max_message_bytes == 10 * MIB
    assert grpc_bounds(settings, max_tensor_values=64 * 3 * 512 * 512).max_concurrent_rpcs == 25


@pytest.fixture(scope="module")
def server(served_variants):
    # 2 MiB of messages at once (two of 1 MiB, the tiny models' largest request), connections living 4 s (less
    # gRPC's 10 % jitter: time for the checks while they are held), 1 s
    # for the HTTP/2 handshake
    running = Server(served_variants, body_memory_mb=2, body_timeout_s=4, request_timeout_s=1, header_timeout_s=1)
    yield running
    assert running.stop()


def test_a_client_calling_across_its_connections_ends_never_sees_them(server):
    """A connection's life is bounded (GOAWAY, then a new one): a client that keeps one channel goes on unharmed."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        codes = []
        started = time.monotonic()
        while time.monotonic() - started < 9:  # two connection lives and more
            codes.append(small_infer(server.grpc_port, channel=channel))
            time.sleep(0.3)
    assert set(codes) == {grpc.StatusCode.OK} and len(codes) > 20


def test_stalled_messages_hold_only_their_room_and_go_with_their_connections(server):
    assert small_infer(server.grpc_port) == grpc.StatusCode.OK
    started = time.monotonic()
    held = [StalledCall(server.grpc_port, 900_000) for _ in range(2)]
    try:
        for call in held:
            call.read(0.3)
            assert not call.refused
        # no room left: the next call is refused at once, stalled or not
        extra = StalledCall(server.grpc_port, 900_000)
        assert extra.refused_within(5)
        extra.close()
        assert small_infer(server.grpc_port) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the connections' life (4 s, and 1 s for what is in flight) ends them, stalled messages and all
        closed_after = wait_until_closed(held, 15)
        assert closed_after is not None, "a stalled call's connection outlived its bound"
        assert time.monotonic() - started < 10
        assert small_infer(server.grpc_port) == grpc.StatusCode.OK
    finally:
        for call in held:
            call.close()


def test_a_message_larger_than_any_request_is_refused_from_its_length(server):
    call = StalledCall(server.grpc_port, 10 * MIB)  # declares 10 MiB; the largest request here is 1 MiB
    try:
        assert call.refused_within(5)
    finally:
        call.close()


def test_a_connection_that_does_not_finish_the_http2_handshake_is_closed(server):
    """gRPC's default waits 120 s for it; here ``HEADER_TIMEOUT_S``, as for an HTTP request's headers."""
    took, _ = exchange_until_closed(server.grpc_port, b"PRI * HTTP/2.0\r\n", wait_s=30)
    assert took < 5
