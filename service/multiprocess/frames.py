"""What crosses between an API server and a model server: the memory they share and the frames on their socket.

Each API server owns one *slot region* per model server it talks to: ``slots`` images in, and each image's
logits, keep mask and FLOPs out. A request frame names a slot; the model server batches the slot's image with
the others', writes the results into the same slot and answers with a reply frame. A slot is free again only
once its reply arrived (or the connection ended), so the model server never writes into a slot in use.

Frames are fixed-size structs (plus an error's message): no pickles cross, and nothing but this service's own
processes can reach the sockets (they live in the 0700 runtime folder).

Each model server also has a *status* block its supervisor and every API server read: its heartbeat (the
monotonic clock, which every process on the machine shares), whether its model is ready, its queue depth and the
time a full batch takes (what admission estimates a new image's wait from); each API server has one too (its
event loop's heartbeat, and whether it serves), which its supervisor reads. Each variant has an *incoming*
block: images each API server is decoding for it, so that the model server waits for more only while some are
on their way.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from service.multiprocess.shared_memory import ArraySpec, carve, layout_size, map_file

# a request: slot, the image's place in its request, its deadline, its threshold (NaN: the variant's), and when the
# API server sent it (monotonic, the clock every process shares): its queue wait counts from then, so the time it
# spent in the socket while the model server ran a batch counts too
REQUEST = struct.Struct("<IIddd")
# a reply: slot, HTTP status, Retry-After, batch size, queue seconds, model seconds, length of the error message
REPLY = struct.Struct("<IHHIddI")
# the first thing a client sends: its API server index, then the length of its slot file's path, then the path
HELLO = struct.Struct("<II")

MAX_API_SERVERS = 64
HEARTBEAT, READY, DEPTH, BATCH_SECONDS, PID, CUDA_GRAPHS = range(6)
STATUS_FIELDS = 8


def encode_request(slot: int, position: int, deadline: float, threshold: float | None, sent: float) -> bytes:
    return REQUEST.pack(slot, position, deadline, math.nan if threshold is None else threshold, sent)


def decode_request(frame: bytes) -> tuple[int, int, float, float | None, float]:
    slot, position, deadline, threshold, sent = REQUEST.unpack(frame)
    return slot, position, deadline, None if math.isnan(threshold) else threshold, sent


@dataclass(frozen=True)
class Reply:
    slot: int
    status: int
    retry_after: int
    batch_size: int
    queue_seconds: float
    inference_seconds: float
    message: str = ""

    def encode(self) -> bytes:
        message = self.message.encode()
        head = REPLY.pack(
            self.slot,
            self.status,
            self.retry_after,
            self.batch_size,
            self.queue_seconds,
            self.inference_seconds,
            len(message),
        )
        return head + message


@dataclass(frozen=True)
class SlotShape:
    slots: int
    image: tuple[int, int, int]  # C, H, W
    classes: int
    blocks: int

    def arrays(self) -> list[ArraySpec]:
        n = self.slots
        return [
            ArraySpec("images", (n, *self.image), torch.float32),
            ArraySpec("logits", (n, self.classes), torch.float32),
            ArraySpec("keep_mask", (n, self.blocks), torch.bool),
            ArraySpec("flops", (n,), torch.int64),
        ]


class SlotRegion:
    """One API server's slots at one model server."""

    def __init__(self, path: Path, shape: SlotShape, create: bool = False):
        self.path = path
        self.shape = shape
        arrays = shape.arrays()
        views = carve(map_file(path, layout_size(arrays), create), arrays)
        self.images: Tensor = views["images"]
        self.logits: Tensor = views["logits"]
        self.keep_mask: Tensor = views["keep_mask"]
        self.flops: Tensor = views["flops"]


def status_block(path: Path, create: bool = False) -> Tensor:
    """A process's status: float64 [STATUS_FIELDS], indexed by HEARTBEAT, READY, DEPTH, BATCH_SECONDS, PID and
    CUDA_GRAPHS (1 when the model server's variant runs captured graphs; an API server's uses HEARTBEAT, READY and
    PID; the supervisor's, HEARTBEAT: a round of its watch)."""
    return map_file(path, STATUS_FIELDS * 8, create).view(torch.float64)


def incoming_block(path: Path, create: bool = False) -> Tensor:
    """A variant's images on their way, int64 [MAX_API_SERVERS]: each API server writes only its own cell."""
    return map_file(path, MAX_API_SERVERS * 8, create).view(torch.int64)
