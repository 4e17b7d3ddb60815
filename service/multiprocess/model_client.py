"""An API server's executor for one variant: it hands images to the variant's model servers through its slots
(``frames.py``) and resolves each image's future when the reply comes back. It reconnects on its own to a model
server that its supervisor replaced, and fails the images in flight on a lost one with a 503 at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from torch import Tensor

from service.batching import ImageResult
from service.config import Settings
from service.errors import Overloaded, ServiceError, Unavailable
from service.multiprocess import frames
from service.multiprocess.frames import HELLO, REPLY, SlotRegion, SlotShape
from service.multiprocess.runtime import RuntimeLayout

log = logging.getLogger(__name__)

RECONNECT_EVERY_S = 0.05


class ReplicaLink(asyncio.Protocol):
    """This API server's connection to one model server, and its slots there. Replies are parsed as they arrive,
    every complete frame of a read at once."""

    def __init__(
        self, socket_path: str, status: np.ndarray, slots: SlotRegion, api_server: int, heartbeat_timeout_s: float
    ):
        self.socket_path = socket_path
        self.status = status
        self.slots = slots
        self.api_server = api_server
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Event | None = None
        self._unread = bytearray()
        self._free = list(range(slots.shape.slots))
        self._pending: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        """Connected, its model loaded, and its heartbeat recent."""
        status = self.status
        fresh = time.monotonic() - status[frames.HEARTBEAT] <= self.heartbeat_timeout_s
        return self._transport is not None and status[frames.READY] == 1.0 and fresh

    def depth(self) -> int:
        return int(self.status[frames.DEPTH])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())

    def stop(self) -> None:
        if self._task is not None:
            self._task.get_loop().call_soon_threadsafe(self._task.cancel)

    def submit(self, tensor: Tensor, deadline: float, threshold: float | None, position: int) -> asyncio.Future:
        transport = self._transport
        if transport is None:
            raise _lost()
        if not self._free:
            raise Overloaded(f"this API server has {len(self._pending)} images waiting at the model; retry shortly")
        slot = self._free.pop()
        self.slots.images[slot].copy_(tensor)
        future = asyncio.get_running_loop().create_future()
        self._pending[slot] = future
        transport.write(frames.encode_request(slot, position, deadline, threshold, time.monotonic()))
        return future

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.create_unix_connection(lambda: self, self.socket_path)
            except OSError:  # not listening yet (starting, or being replaced)
                await asyncio.sleep(RECONNECT_EVERY_S)
                continue
            await self._lost.wait()
            log.warning("lost the model server at %s; reconnecting", self.socket_path)

    # asyncio.Protocol ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        path = str(self.slots.path).encode()
        transport.write(HELLO.pack(self.api_server, len(path)) + path)
        self._lost = asyncio.Event()
        self._unread.clear()
        self._transport = transport

    def connection_lost(self, error: Exception | None) -> None:
        self._transport = None
        pending, self._pending = self._pending, {}
        self._free = list(range(self.slots.shape.slots))
        for future in pending.values():
            if not future.done():
                future.set_exception(_lost())
        if self._lost is not None:
            self._lost.set()

    def data_received(self, data: bytes) -> None:
        buffer = self._unread
        buffer += data
        offset = 0
        while len(buffer) - offset >= REPLY.size:
            slot, status, retry_after, batch_size, queued, inferred, length = REPLY.unpack_from(buffer, offset)
            if len(buffer) - offset < REPLY.size + length:
                break
            message = bytes(buffer[offset + REPLY.size : offset + REPLY.size + length]).decode()
            offset += REPLY.size + length
            self._settle(slot, status, retry_after, batch_size, queued, inferred, message)
        del buffer[:offset]

    def _settle(
        self, slot: int, status: int, retry_after: int, batch_size: int, queued: float, inferred: float, message: str
    ) -> None:
        future = self._pending.pop(slot, None)
        if future is None:
            return
        result = None
        if status == 200:
            slots = self.slots
            result = ImageResult(
                logits=slots.logits[slot].clone(),
                keep_mask=slots.keep_mask[slot].clone(),
                flops=int(slots.flops[slot]),
                queue_seconds=queued,
                inference_seconds=inferred,
                batch_size=batch_size,
            )
        self._free.append(slot)  # the results are copied out: the slot may take the next image
        if future.done():
            return  # cancelled: the request gave up
        if result is not None:
            future.set_result(result)
        else:
            headers = {"Retry-After": str(retry_after)} if retry_after else None
            future.set_exception(ServiceError(message, status, headers))


def _lost() -> Unavailable:
    return Unavailable("the variant's model server stopped answering; it is being restarted, retry shortly")


class ModelClient:
    """The data plane's executor for one variant served by model servers (``service.dataplane.Executor``)."""

    def __init__(
        self,
        name: str,
        links: list[ReplicaLink],
        incoming: np.ndarray,
        api_server: int,
        max_batch_size: int,
        wait_budget_s: float,
        retry_after_s: int,
    ):
        self.name = name
        self.links = links
        self.incoming = incoming
        self.api_server = api_server
        self.max_batch_size = max_batch_size
        self.wait_budget_s = wait_budget_s
        self.retry_after_s = retry_after_s

    @property
    def alive(self) -> bool:
        """One of the variant's model servers answers."""
        return any(link.alive for link in self.links)

    answering = alive  # what routing reads: unkeyed requests go to variants that answer

    @property
    def graphs_in_use(self) -> bool | None:
        """Whether the variant's ready model servers run CUDA graphs (each says so in its status block; a server
        whose capture failed runs without); None while none is ready."""
        ready = [link.status[frames.CUDA_GRAPHS] == 1.0 for link in self.links if link.status[frames.READY] == 1.0]
        return all(ready) if ready else None

    def start(self) -> None:
        for link in self.links:
            link.start()

    def stop(self, timeout: float | None = None) -> None:
        for link in self.links:
            link.stop()
        self.incoming[self.api_server] = 0

    def depth(self) -> int:
        return sum(link.depth() for link in self.links)

    def expect(self, images: int) -> None:
        self.incoming[self.api_server] += images

    def refuse_if_overloaded(self) -> None:
        """Refuse a request whose first image would wait past the queue-wait budget, from the queue every API
        server feeds (the model servers publish its depth and their batch time)."""
        alive = [link for link in self.links if link.alive] or self.links
        expected = min(
            (link.depth() // self.max_batch_size) * float(link.status[frames.BATCH_SECONDS]) for link in alive
        )
        if expected > self.wait_budget_s:
            raise Overloaded(
                f"variant {self.name!r} is overloaded: about {expected * 1000:.0f} ms of batches are queued ahead, "
                f"over the {self.wait_budget_s * 1000:.0f} ms queue-wait budget; retry shortly",
                self.retry_after_s,
            )

    def submit(
        self, tensor: Tensor, deadline: float, threshold: float | None = None, position: int = 0
    ) -> asyncio.Future:
        alive = [link for link in self.links if link.alive]
        if not alive:
            raise _lost()
        link = alive[0] if len(alive) == 1 else min(alive, key=ReplicaLink.depth)
        return link.submit(tensor, deadline, threshold, position)


def model_client(
    layout: RuntimeLayout,
    variant_index: int,
    name: str,
    shape: SlotShape,
    replicas: int,
    api_server: int,
    settings: Settings,
) -> ModelClient:
    """API server ``api_server``'s executor for variant ``variant_index``: its slots at each of the variant's
    ``replicas`` model servers (made here), their status blocks and the variant's incoming block (the supervisor's)."""
    links = []
    for replica in range(replicas):
        status = frames.status_block(layout.status(variant_index, replica)).numpy()
        slots = SlotRegion(layout.slots(api_server, variant_index, replica), shape, create=True)
        socket_path = str(layout.socket(variant_index, replica))
        links.append(ReplicaLink(socket_path, status, slots, api_server, settings.worker_heartbeat_timeout_s))
    incoming = frames.incoming_block(layout.incoming(variant_index)).numpy()
    with contextlib.suppress(IndexError):
        incoming[api_server] = 0
    return ModelClient(
        name,
        links,
        incoming,
        api_server,
        settings.max_batch_size,
        settings.queue_wait_budget_ms / 1000,
        settings.retry_after_s,
    )
