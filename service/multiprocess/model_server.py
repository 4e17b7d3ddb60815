"""A model server: one variant's model and its micro-batcher in a process of its own, taking images from every
API server (``frames.py`` says how). Its supervisor starts it, reads its heartbeat, and replaces it when it dies
or hangs; API servers reconnect to its successor on their own.

One thread does everything but the heartbeat: it reads every request frame that has arrived, forms a batch from
the queue (waiting up to ``max_batch_wait_ms`` for more only while an API server is decoding images for this
variant), runs the model, writes each image's results into its slot and answers each API server with one write
per batch. No futures, no thread hand-offs: per image, the model server's cost is a few struct unpacks and copies.
The refusals are the in-process batcher's (``service/batching.py``): a full queue, a passed deadline, an image
that waited past its queue-wait budget.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from models.device import resolve_device
from service.batching import BatchTime, thresholds_of, too_late
from service.config import Settings
from service.errors import Overloaded, ServiceError
from service.fork_server import service_gone
from service.libc import name_process
from service.multiprocess import frames
from service.multiprocess.frames import HELLO, REQUEST, Reply, SlotRegion, SlotShape
from service.multiprocess.runtime import RuntimeLayout
from service.multiprocess.shared_memory import remove_runtime_dir
from service.variants import ExecutionOptions, load_variant
from service.worker import HEARTBEAT_EVERY_S

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1  # how often an idle server looks whether it was told to stop
SEND_TIMEOUT_S = 2.0  # an API server that does not read its replies for this long is dropped


@dataclass(frozen=True)
class ModelServerSpec:
    settings: Settings
    variant: int  # index in settings.variants
    replica: int
    layout: RuntimeLayout
    torch_threads: int
    lifeline: Connection  # reads end-of-file once the supervisor is gone (service/fork_server.py)
    restarted: bool = False  # replaces one that was lost: counted in blockdrop_worker_restarts

    @property
    def name(self) -> str:
        return self.settings.variants[self.variant].name


def main(spec: ModelServerSpec) -> None:
    """The process's entry point (started by the supervisor)."""
    os.setpgid(0, 0)  # signals come from the supervisor, not from a terminal's Ctrl-C to the whole group
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(f"bd:{spec.name}")
    status = frames.status_block(spec.layout.status(spec.variant, spec.replica)).numpy()
    status[frames.PID] = os.getpid()
    beat = (status, spec.lifeline, spec.layout)
    threading.Thread(target=_beat, args=beat, name="heartbeat", daemon=True).start()
    from service.request_log import configure_logging

    configure_logging(spec.settings.log_format, spec.settings.log_level)
    server = ModelServer(spec, status)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.serve()


def _beat(status, lifeline: Connection, layout: RuntimeLayout) -> None:
    while True:
        status[frames.HEARTBEAT] = time.monotonic()
        if service_gone(lifeline):  # the supervisor was killed: nobody else will clean up
            remove_runtime_dir(layout.root)
            os._exit(0)
        time.sleep(HEARTBEAT_EVERY_S)


@dataclass
class _Client:
    """One API server's connection and its slots here."""

    sock: socket.socket
    slots: SlotRegion | None = None  # after its hello
    unread: bytearray = field(default_factory=bytearray)
    replies: list[bytes] = field(default_factory=list)


@dataclass
class _Image:
    client: _Client
    slot: int
    enqueued: float
    deadline: float
    threshold: float | None
    patience: float


class ModelServer:
    def __init__(self, spec: ModelServerSpec, status):
        self.spec = spec
        self.status = status
        s = self.settings = spec.settings
        torch.set_num_threads(spec.torch_threads)
        self.variant = load_variant(
            s.variants[spec.variant],
            str(resolve_device(s.device)),
            fold_batchnorm=s.fold_batchnorm,
            execution=ExecutionOptions.from_settings(s),
        )
        manifest = self.variant.manifest
        image = (3, manifest.input.height, manifest.input.width)
        self.shape = SlotShape(s.queue_limit, image, len(manifest.classes), self.variant.num_blocks)
        for n in sorted({1, s.max_batch_size}):  # warm: the first requests are not slow
            self.variant.infer(torch.zeros(n, *image))
        # the batch in the layout the model runs in on CPU (a CUDA variant copies it to the device as it is)
        layout = torch.channels_last if self.variant.device == "cpu" else torch.contiguous_format
        self.batch = torch.zeros((s.max_batch_size, *image)).contiguous(memory_format=layout)
        self.incoming = frames.incoming_block(spec.layout.incoming(spec.variant)).numpy()
        from service.metrics import ServiceMetrics  # imported once PROMETHEUS_MULTIPROC_DIR is set

        self.metrics = ServiceMetrics()
        if spec.restarted:
            self.metrics.worker_restarts.labels(spec.name).inc()
        self.queue: collections.deque[_Image] = collections.deque()
        self.batch_time = BatchTime(s.max_batch_size)
        self.selector = selectors.DefaultSelector()
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    # the loop ------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        path = self.spec.layout.socket(self.spec.variant, self.spec.replica)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a predecessor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(frames.MAX_API_SERVERS)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.status[frames.CUDA_GRAPHS] = float(self.variant.cuda_graphs)
        self.status[frames.READY] = 1.0
        log.info("model server for variant %s (replica %d) ready", self.spec.name, self.spec.replica)
        while not self._stopping or self.queue:
            self._poll(0.0 if self.queue else IDLE_POLL_S)
            if self.queue:
                self._run_batch(self._gather())
        listener.close()

    def _poll(self, timeout: float) -> None:
        """Accept new API servers and queue every complete request frame that has arrived."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    connection, _ = key.fileobj.accept()
                    connection.settimeout(SEND_TIMEOUT_S)
                    self.selector.register(connection, selectors.EVENT_READ, _Client(connection))
                continue
            client: _Client = key.data
            try:
                chunk = client.sock.recv(1 << 16)
            except (BlockingIOError, TimeoutError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(client)
                continue
            client.unread += chunk
            try:
                self._take_frames(client)
            except ConnectionError as error:
                log.error("dropping an API server's connection: %s", error)
                self._drop(client)
        self.status[frames.DEPTH] = len(self.queue)

    def _take_frames(self, client: _Client) -> None:
        buffer, now = client.unread, time.monotonic()
        offset = 0
        if client.slots is None:
            if len(buffer) < HELLO.size:
                return
            _, length = HELLO.unpack_from(buffer)
            if len(buffer) < HELLO.size + length:
                return
            client.slots = SlotRegion(self._inside_runtime(bytes(buffer[HELLO.size : HELLO.size + length])), self.shape)
            offset = HELLO.size + length
        while len(buffer) - offset >= REQUEST.size:
            slot, position, deadline, threshold, sent = REQUEST.unpack_from(buffer, offset)
            offset += REQUEST.size
            threshold = None if math.isnan(threshold) else threshold
            self._admit(client, slot, position, deadline, threshold, min(sent, now))
        del buffer[:offset]

    def _admit(self, client: _Client, slot: int, position: int, deadline: float, threshold, sent: float) -> None:
        if not 0 <= slot < self.shape.slots:
            raise ConnectionError(f"slot {slot} out of range")
        s = self.settings
        if len(self.queue) >= s.queue_limit:
            refusal = Overloaded(
                f"variant {self.spec.name!r} is overloaded: its queue is full ({s.queue_limit} images); retry shortly",
                s.retry_after_s,
            )
            client.replies.append(_refusal(slot, refusal))
            self._flush(client)
            return
        # a request's later images may also wait for the batches of its earlier ones
        patience = s.queue_wait_budget_ms / 1000 + (position // s.max_batch_size) * self.batch_time.seconds
        self.queue.append(_Image(client, slot, sent, deadline, threshold, patience))

    def _gather(self) -> list[_Image]:
        """A batch from the queue: what is there, and more for up to the batch wait while API servers are still
        decoding images for this variant."""
        s = self.settings
        wait_until = time.monotonic() + s.max_batch_wait_ms / 1000
        while len(self.queue) < s.max_batch_size and self.incoming.any():
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                break
            self._poll(remaining)
        return [self.queue.popleft() for _ in range(min(len(self.queue), s.max_batch_size))]

    def _run_batch(self, images: list[_Image]) -> None:
        s, now = self.settings, time.monotonic()
        live = []
        for image in images:
            refusal = too_late(self.spec.name, now, image.enqueued, image.deadline, image.patience, s.retry_after_s)
            if refusal is not None:
                image.client.replies.append(_refusal(image.slot, refusal))
            elif image.client.slots is not None:
                live.append(image)
        if live:
            self._infer(live)
        for client in {id(image.client): image.client for image in images}.values():
            self._flush(client)
        self.status[frames.DEPTH] = len(self.queue)

    def _infer(self, live: list[_Image]) -> None:
        started = time.monotonic()
        n = len(live)
        try:
            for row, image in enumerate(live):
                self.batch[row].copy_(image.client.slots.images[image.slot])
            thresholds = thresholds_of([image.threshold for image in live])
            result = self.variant.infer(self.batch[:n], thresholds)
        except Exception as error:  # a model failure fails this batch, not the server
            log.exception("inference failed on variant %s", self.spec.name)
            refusal = ServiceError(f"inference failed: {type(error).__name__}")
            for image in live:
                image.client.replies.append(_refusal(image.slot, refusal))
            return
        seconds = time.monotonic() - started
        self.batch_time.observe(n, seconds)
        self.status[frames.BATCH_SECONDS] = self.batch_time.seconds
        self.metrics.observe_batch(self.spec.name, result, seconds, self.variant.full_flops)
        flops = result.flops.tolist()
        for row, image in enumerate(live):
            slots, slot = image.client.slots, image.slot
            slots.logits[slot].copy_(result.logits[row])
            slots.keep_mask[slot].copy_(result.keep_mask[row])
            slots.flops[slot] = flops[row]
            reply = Reply(slot, 200, 0, n, started - image.enqueued, seconds)
            image.client.replies.append(reply.encode())

    # connections ---------------------------------------------------------------------------------------------
    def _flush(self, client: _Client) -> None:
        if not client.replies:
            return
        data, client.replies = b"".join(client.replies), []
        try:
            client.sock.sendall(data)
        except OSError:  # gone, or not reading: its images are answered no more
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()
        client.slots = None  # its queued images are skipped

    def _inside_runtime(self, raw: bytes) -> Path:
        path = Path(raw.decode())
        if path.parent != self.spec.layout.root:
            raise ConnectionError(f"slot file {raw!r} is not in the runtime folder")
        return path


def _refusal(slot: int, error: ServiceError) -> bytes:
    retry_after = int(error.headers.get("Retry-After", "0") or 0)
    return Reply(slot, error.status_code, retry_after, 0, 0.0, 0.0, error.message).encode()
