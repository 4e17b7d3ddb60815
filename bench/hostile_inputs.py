"""The hostile requests of issue 37, built once and shared by ``bench hostile`` (one at a time, measured) and
``bench soak`` (mixed into hours of good traffic). Each says where it goes and what a correct service answers."""

from __future__ import annotations

import io
import select
import socket
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Hostile:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expected: tuple[int, ...] = (400, 413, 422)


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def json_tensor_of(values: int) -> bytes:
    """A v2 JSON request whose one tensor says [1, 3, 32, 32] but holds ``values`` numbers."""
    data = b",".join([b"0"] * values)
    return b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [' + data + b"]}]}"


def hostile_requests(admin_token: str) -> list[Hostile]:
    """Every request-level repro of the issue (the connection-level ones are ``send_raw`` below)."""
    admin = {"authorization": f"Bearer {admin_token}", "content-type": "application/json"}
    as_json = {"content-type": "application/json"}
    return [
        Hostile("JSON batch nested 10,000 deep", "POST", "/v1/classify", b"[" * 10_000 + b"]" * 10_000, as_json),
        Hostile("JSON batch nested 100,000 deep", "POST", "/v1/classify", b"[" * 100_000 + b"]" * 100_000, as_json),
        Hostile(
            "Inference-Header-Content-Length of 5,000 digits",
            "POST",
            "/v2/models/blockdrop/infer",
            b"{}",
            {"inference-header-content-length": "9" * 5000},
        ),
        Hostile(
            "top_k of 5,000 digits",
            "POST",
            "/v1/classify?top_k=" + "9" * 5000,
            png((32, 32), "RGB"),
            {"content-type": "image/png"},
        ),
        Hostile("admin weight 1e400", "PUT", "/v1/variants/full", b'{"weight": 1e400}', admin),
        Hostile(
            "feedback label true", "POST", "/v1/feedback", b'{"request_id": "x", "label": true}', as_json, (404, 422)
        ),
        Hostile("10 MiB v2 JSON of 5.2 M numbers", "POST", "/v2/models/blockdrop/infer", json_tensor_of(5_200_000)),
        Hostile("6300x6300 PNG (38 KB)", "POST", "/v1/classify", png((6300, 6300)), {"content-type": "image/png"}),
    ]


def send_raw(port: int, payload: bytes, wait_s: float) -> bytes:
    """Send ``payload`` on a fresh connection, 64 KiB at a time, stopping as soon as the server answers (a server
    that refuses a huge header answers before it has all of it), and read until it closes (or ``wait_s`` passes)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        try:
            for start in range(0, len(payload), 65536):
                if select.select([connection], [], [], 0)[0]:
                    break  # answered already
                connection.sendall(payload[start : start + 65536])
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return received


def huge_header(size: int) -> bytes:
    return b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * size + b"\r\n\r\n"


HALF_HEADER = b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nX-Slow: "


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP answer, None if none came."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
