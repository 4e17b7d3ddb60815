"""A gRPC ModelInfer sent all but its last byte, over raw HTTP/2 frames (``h2``): what a client that stalls
mid-message holds in the service (``bench hostile``, tests/service/test_grpc_bounds.py)."""

from __future__ import annotations

import selectors
import socket
import struct
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def small_infer(port: int, model: str = "full", channel: grpc.Channel | None = None) -> grpc.StatusCode:
    """The status of one small ModelInfer (a 32 x 32 UINT8 image) of ``model``, on ``channel`` or one of its own."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)
    used = channel or grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        service_pb2_grpc.GRPCInferenceServiceStub(used).ModelInfer(request, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        if channel is None:
            used.close()


class StalledCall:
    """A ModelInfer on a connection of its own whose message declares ``size`` bytes and sends all but the last."""

    def __init__(self, port: int, size: int):
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        headers = {":method": "POST", ":scheme": "http", ":path": METHOD, ":authority": "x"}
        self.h2.send_headers(1, [*headers.items(), ("content-type", "application/grpc"), ("te", "trailers")])
        self.events: list = []
        self.going_away = False
        self._flush()
        message = struct.pack(">BI", 0, size) + b"\0" * (size - 1)
        sent = 0
        while sent < len(message) and not self.refused:
            room = min(self.h2.local_flow_control_window(1), self.h2.max_outbound_frame_size, len(message) - sent)
            if room > 0:
                self.h2.send_data(1, message[sent : sent + room])
                sent += room
                self._flush()
            elif not self.read(1.0):
                break  # closed before the message was all sent

    def _flush(self) -> None:
        self.socket.sendall(self.h2.data_to_send())

    def read(self, wait_s: float) -> bool:
        """Take what the server sent within ``wait_s``; False once it has closed the connection."""
        self.socket.settimeout(wait_s)
        try:
            data = self.socket.recv(65536)
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        if not self.going_away:  # after a GOAWAY, only the socket's end is of interest
            try:
                self.events += self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:  # frames after a GOAWAY in the same read
                self.going_away = True
                return True
            self.going_away = any(isinstance(event, h2.events.ConnectionTerminated) for event in self.events)
            self._flush()
        return True

    @property
    def refused(self) -> bool:
        """The server ended the call: a reset, or trailers with a non-OK grpc-status."""
        for event in self.events:
            if isinstance(event, h2.events.StreamReset):
                return True
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                status = dict(event.headers).get(b"grpc-status")
                if status not in (None, b"0"):
                    return True
        return False

    def refused_within(self, wait_s: float) -> bool:
        """Whether the server ends the call within ``wait_s`` (reading what it sends meanwhile)."""
        deadline = time.monotonic() + wait_s
        while not self.refused and time.monotonic() < deadline and self.read(0.2):
            pass
        return self.refused

    def close(self) -> None:
        self.socket.close()


def wait_until_closed(calls: list[StalledCall], wait_s: float) -> float | None:
    """Seconds until the server has closed every call's connection (None: not within ``wait_s``)."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    for call in calls:
        selector.register(call.socket, selectors.EVENT_READ, call)
    try:
        while selector.get_map() and time.monotonic() - started < wait_s:
            for key, _ in selector.select(timeout=0.5):
                if not key.data.read(0.01):
                    selector.unregister(key.fileobj)
        return None if selector.get_map() else round(time.monotonic() - started, 1)
    finally:
        selector.close()
