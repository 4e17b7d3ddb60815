"""The gRPC server's counterparts of the HTTP server's bounds (``service/http_protocol.py``), as grpcio's options.

gRPC holds a request's message until its last byte is in, and had no bound but its size (``MAX_BODY_BYTES``): any
number of clients could each send a 10 MB ModelInfer but its last byte and hold it for as long as they liked. Here:

- a message is at most what the largest request can weigh (``MAX_IMAGES_PER_REQUEST`` images of the largest model
  input, at the most bytes a value a client may spend on it), not ``MAX_BODY_BYTES``;
- at most ``BODY_MEMORY_MB`` of such messages at once: RPCs past that number get RESOURCE_EXHAUSTED at once
  (grpcio counts an RPC from its headers, so a stalled one holds its place);
- a connection lives ``BODY_TIMEOUT_S``, then gets a GOAWAY (clients open a new one) and its RPCs in flight have
  ``REQUEST_TIMEOUT_S`` more to finish: a stalled message is dropped within their sum. (gRPC has no timeout for
  the rest of a message, only for a whole connection's life.)
- the HTTP/2 handshake must end within ``HEADER_TIMEOUT_S``.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings

# FP32 as raw bytes or packed floats takes 4 bytes a value; an unpacked repeated field 5 (tag and value); UINT8 less
BYTES_PER_VALUE = 5
MESSAGE_OVERHEAD_BYTES = 64 * 1024  # names, datatypes, shapes, parameters, metadata


@dataclass(frozen=True)
class GrpcBounds:
    max_message_bytes: int
    max_concurrent_rpcs: int
    options: list[tuple[str, int]]


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def grpc_bounds(settings: Settings, max_tensor_values: int) -> GrpcBounds:
    """The bounds for a service whose largest request carries ``max_tensor_values`` values."""
    message = min(settings.max_body_bytes, BYTES_PER_VALUE * max_tensor_values + MESSAGE_OVERHEAD_BYTES)
    rpcs = max(1, settings.body_memory_bytes // message)
    options = [
        ("grpc.max_receive_message_length", message),
        ("grpc.max_send_message_length", settings.max_body_bytes),
        ("grpc.server_handshake_timeout_ms", ms(settings.header_timeout_s)),
        ("grpc.max_connection_age_ms", ms(settings.body_timeout_s)),
        ("grpc.max_connection_age_grace_ms", ms(settings.request_timeout_s)),
    ]
    return GrpcBounds(message, rpcs, options)
