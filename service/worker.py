"""A variant's model in a process of its own, so that inference never waits for the event loop's GIL (nor the
event loop for inference's).

The micro-batcher's thread hands a batch over through shared memory: the images go into a preallocated shared
input tensor, one small message on a pipe says how many rows to run, and the worker writes logits, masks and
FLOPs into shared output tensors before it answers. Only row counts and plain status tuples cross the pipe, and
only between this service's own processes. A worker that dies or stops answering is noticed on the next batch
(that batch fails with a 503), killed if need be and started again; until it is back the variant is not ready.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.multiprocessing as mp
from torch import Tensor

from models.blockdrop import InferenceResult
from service.config import VariantSettings
from service.errors import ServiceError
from service.variants import ExecutionOptions

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # loading and warming a model, at worst


@dataclass(frozen=True)
class TimedInferenceResult(InferenceResult):
    """A worker's answer, with the time the model itself took (the hand-over between processes not included)."""

    model_seconds: float = 0.0


class WorkerUnavailable(ServiceError):
    """The inference worker stopped; the batch is refused while a new one starts."""

    status_code = 503


@dataclass(frozen=True)
class WorkerSpec:
    settings: VariantSettings
    device: str
    torch_threads: int
    fold_batchnorm: bool
    max_batch_size: int
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    num_blocks: int
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)


@dataclass
class _Buffers:
    """Shared tensors: the batch in, the per-image results out."""

    images: Tensor
    thresholds: Tensor  # per row, NaN for the variant's own
    logits: Tensor
    keep_mask: Tensor
    flops: Tensor

    @classmethod
    def allocate(cls, spec: WorkerSpec) -> _Buffers:
        n = spec.max_batch_size
        # the images in the layout the model runs in, so the worker converts nothing
        layout = torch.channels_last if spec.device == "cpu" else torch.contiguous_format
        return cls(
            torch.zeros((n, *spec.input_shape)).contiguous(memory_format=layout).share_memory_(),
            torch.zeros(n).share_memory_(),
            torch.zeros((n, spec.num_classes)).share_memory_(),
            torch.zeros((n, spec.num_blocks), dtype=torch.bool).share_memory_(),
            torch.zeros(n, dtype=torch.int64).share_memory_(),
        )


def _serve_batches(connection: multiprocessing.connection.Connection, spec: WorkerSpec, buffers: _Buffers) -> None:
    """The worker process: load the variant, warm it up, then run each batch it is told about until told to stop."""
    torch.set_num_threads(spec.torch_threads)
    from service.variants import load_variant

    variant = load_variant(spec.settings, spec.device, fold_batchnorm=spec.fold_batchnorm, execution=spec.execution)
    for n in sorted({1, spec.max_batch_size}):
        variant.infer(buffers.images[:n])
    gc.collect()
    gc.freeze()  # the model lives as long as the process: keep it out of every later collection
    connection.send(("ready", None))
    while True:
        try:
            rows = connection.recv()
        except (EOFError, OSError):
            return  # the service went away
        if rows is None:
            return
        rows, with_thresholds = rows
        try:
            started = time.perf_counter()
            thresholds = buffers.thresholds[:rows] if with_thresholds else None
            result = variant.infer(buffers.images[:rows], thresholds)
            seconds = time.perf_counter() - started
            buffers.logits[:rows].copy_(result.logits)
            buffers.keep_mask[:rows].copy_(result.keep_mask)
            buffers.flops[:rows].copy_(result.flops)
            connection.send(("ok", seconds))
        except Exception as error:  # a model failure fails this batch, not the worker
            connection.send(("error", f"{type(error).__name__}: {error}"))


@dataclass
class _Child:
    process: mp.Process
    connection: multiprocessing.connection.Connection


class InferenceWorker:
    """``infer(batch)`` in a child process, with the same contract as ``Variant.infer``. A supervising thread
    replaces a lost child; meanwhile ``infer`` refuses at once with a 503 rather than making the queue wait."""

    def __init__(
        self,
        spec: WorkerSpec,
        answer_timeout_s: float,
        on_restart: Callable[[], None] | None = None,
        check_every_s: float = 0.5,
    ):
        self.spec = spec
        self.answer_timeout_s = answer_timeout_s
        self.check_every_s = check_every_s
        self._on_restart = on_restart
        self._context = mp.get_context("spawn")  # never fork a process that holds threads and torch state
        self._buffers = _Buffers.allocate(spec)
        self._child: _Child | None = None
        self._starting: _Child | None = None
        self._lock = threading.Lock()  # one batch at a time, and no batch while the child is swapped
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name=f"supervise-{spec.settings.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.spec.settings.name

    @property
    def alive(self) -> bool:
        return self._child is not None

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    def start(self) -> None:
        """Start the worker and wait until its model is loaded and warm."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the worker process without waiting for it (several variants load in parallel)."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve_batches, args=(child, self.spec, self._buffers), name=f"blockdrop-worker-{self.name}"
        )
        process.daemon = True
        process.start()
        child.close()
        self._starting = _Child(process, parent)

    def wait_ready(self) -> None:
        """Wait for the launched worker's model to be ready, then serve batches with it."""
        starting, self._starting = self._starting, None
        if starting is None:
            raise RuntimeError(f"the inference worker of variant {self.name!r} was not launched")
        if not starting.connection.poll(START_TIMEOUT_S):
            starting.process.kill()
            raise RuntimeError(f"the inference worker of variant {self.name!r} did not start in {START_TIMEOUT_S:g} s")
        try:
            starting.connection.recv()
        except EOFError:
            starting.process.join(5)
            raise RuntimeError(
                f"the inference worker of variant {self.name!r} exited while loading "
                f"(exit code {starting.process.exitcode})"
            ) from None
        with self._lock:
            if self._stopping.is_set():  # stopped while this one loaded
                starting.process.kill()
                return
            self._child = starting
        if not self._supervisor.is_alive():
            self._supervisor.start()

    def infer(self, batch: Tensor, thresholds: Tensor | None = None) -> InferenceResult:
        with self._lock:
            child = self._child
            if child is None:
                raise WorkerUnavailable(
                    f"the inference worker of variant {self.name!r} is restarting; retry shortly",
                    headers={"Retry-After": "1"},
                )
            rows = len(batch)
            self._buffers.images[:rows].copy_(batch)
            if thresholds is not None:
                self._buffers.thresholds[:rows].copy_(thresholds)
            try:
                child.connection.send((rows, thresholds is not None))
                if not child.connection.poll(self.answer_timeout_s):
                    raise TimeoutError
                status, message = child.connection.recv()
            except (EOFError, OSError, TimeoutError):
                self._lose(child)
                raise WorkerUnavailable(
                    f"the inference worker of variant {self.name!r} stopped; it is being restarted",
                    headers={"Retry-After": "1"},
                ) from None
            if status != "ok":
                raise RuntimeError(message)
            b = self._buffers
            logits, keep_mask, flops = b.logits[:rows].clone(), b.keep_mask[:rows].clone(), b.flops[:rows].clone()
            return TimedInferenceResult(logits, keep_mask, flops, model_seconds=message)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(OSError):  # already gone
                child.connection.send(None)
            child.process.join(timeout)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout)

    def _supervise(self) -> None:
        """Notice a worker that died between batches, and start a new one for any lost worker."""
        while not self._stopping.wait(self.check_every_s):
            with self._lock:
                child = self._child
                if child is not None and not child.process.is_alive():
                    self._lose(child)
            if self._child is None and not self._stopping.is_set():
                self._restart()

    def _lose(self, child: _Child) -> None:
        """Forget a child that died or stopped answering (called with the lock held)."""
        log.error("the inference worker of variant %s (pid %s) stopped answering", self.name, child.process.pid)
        self._child = None
        if child.process.is_alive():
            child.process.kill()
        child.process.join(5)

    def _restart(self) -> None:
        started = time.monotonic()
        try:
            self.start()
        except RuntimeError:
            log.exception("could not restart the inference worker of variant %s", self.name)
            return  # tried again at the next check
        log.warning("restarted the inference worker of variant %s in %.1f s", self.name, time.monotonic() - started)
        if self._on_restart is not None:
            self._on_restart()
