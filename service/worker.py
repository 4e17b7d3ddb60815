"""A variant's model in a process of its own, so that inference never waits for the event loop's GIL (nor the
event loop for inference's).

The micro-batcher's thread hands a batch over through shared memory: the images go into a preallocated shared
input tensor, one small message on a pipe says how many rows to run, and the worker writes logits, masks and
FLOPs into shared output tensors before it answers. Only row counts and plain status tuples cross the pipe, and
only between this service's own processes.

A thread in the worker writes a heartbeat (the monotonic clock, which every process on the machine shares) into
shared memory every 100 ms, whatever the model is doing. A supervising thread here reads it: a worker that died,
or whose heartbeat is older than the timeout (hung, stopped, starved), is killed at once, which fails its batch in
flight with a 503, and is started again; from the moment it is noticed the variant is not ready.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.blockdrop import InferenceResult
from service.config import VariantSettings
from service.errors import ServiceError
from service.fork_server import (
    WORKER_MODULES,
    ForkedProcess,
    ForkServerEnded,
    ForkStart,
    Lifeline,
    fork_server_context,
    service_gone,
)
from service.libc import name_process
from service.variants import ExecutionOptions

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # loading and warming a model, at worst (CUDA-graph capture comes on top)
HEARTBEAT_EVERY_S = 0.1
RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S = 1.0, 60.0  # after a failed start: 1, 2, 4 … 60 s


@dataclass(frozen=True)
class TimedInferenceResult(InferenceResult):
    """A worker's answer, with the time the model itself took (the hand-over between processes not included)."""

    model_seconds: float = 0.0


class WorkerUnavailable(ServiceError):
    """The inference worker stopped; the batch is refused while a new one starts."""

    status_code = 503


def how_it_ended(exit_code: int | None) -> str:
    """A process's end as a log line says it: its exit code, or the signal that ended it."""
    if exit_code is None:
        return "ended"
    if exit_code < 0:
        try:
            return f"was ended by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"was ended by signal {-exit_code}"
    return f"exited with code {exit_code}"


def start_timeout_s(execution: ExecutionOptions) -> float:
    """How long a model's process may take to become ready: loading and warming it, plus the capture budget when
    it captures CUDA graphs (a budget set longer than the start-up timeout must not get every start killed)."""
    return START_TIMEOUT_S + (execution.capture_budget_s if execution.cuda_graphs else 0.0)


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


def _beat(heartbeat: ctypes.c_double, lifeline: multiprocessing.connection.Connection) -> None:
    """The worker's heartbeat, beside whatever the main thread does; it ends the worker if the service is gone."""
    while True:
        heartbeat.value = time.monotonic()
        if service_gone(lifeline):  # the service died without stopping us: nobody will ever send a batch
            os._exit(0)
        time.sleep(HEARTBEAT_EVERY_S)


def _serve_batches(
    connection: multiprocessing.connection.Connection,
    spec: WorkerSpec,
    buffers: _Buffers,
    heartbeat: ctypes.c_double,
    lifeline: multiprocessing.connection.Connection,
) -> None:
    """The worker process: load the variant, warm it up, then run each batch it is told about until told to stop."""
    # a group of its own: a SIGTERM or Ctrl-C to the service's group (a process manager, a terminal) is the
    # service's to act on (serve through the pre-stop period, drain, then stop its workers), not the workers' to die of
    os.setpgid(0, 0)
    name_process(f"bd:{spec.settings.name}")
    threading.Thread(target=_beat, args=(heartbeat, lifeline), name="heartbeat", daemon=True).start()
    torch.set_num_threads(spec.torch_threads)
    from service.variants import load_variant

    variant = load_variant(spec.settings, spec.device, fold_batchnorm=spec.fold_batchnorm, execution=spec.execution)
    for n in sorted({1, spec.max_batch_size}):
        variant.infer(buffers.images[:n])
    gc.collect()
    gc.freeze()  # the model lives as long as the process: keep it out of every later collection
    connection.send(("ready", {"cuda_graphs": variant.cuda_graphs}))  # what it runs with, for /v1/models
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
    process: ForkedProcess
    connection: multiprocessing.connection.Connection
    heartbeat: ctypes.c_double

    def silent_for(self) -> float:
        """Seconds since the child's last heartbeat."""
        return time.monotonic() - self.heartbeat.value


class InferenceWorker:
    """``infer(batch)`` in a child process, with the same contract as ``Variant.infer``. A supervising thread
    replaces a lost child; meanwhile ``infer`` refuses at once with a 503 rather than making the queue wait."""

    def __init__(
        self,
        spec: WorkerSpec,
        answer_timeout_s: float,
        on_restart: Callable[[], None] | None = None,
        check_every_s: float = 0.2,
        heartbeat_timeout_s: float = 1.0,
    ):
        self.spec = spec
        self.answer_timeout_s = answer_timeout_s
        self.check_every_s = check_every_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._on_restart = on_restart
        self._failed_starts = 0  # in a row: each waits longer before the next try
        self._context = fork_server_context(WORKER_MODULES)  # never fork the service: it holds threads, torch state
        self._lifeline = Lifeline(self._context)
        self._buffers = _Buffers.allocate(spec)
        self._child: _Child | None = None
        self._starting: _Child | None = None
        self._forking: ForkStart | None = None  # a start waiting for the fork server
        self.cuda_graphs: bool | None = None  # whether the running child captured CUDA graphs (None: not started)
        self._lock = threading.Lock()  # one batch at a time, and no batch while the child is swapped
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name=f"supervise-{spec.settings.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.spec.settings.name

    @property
    def alive(self) -> bool:
        """Started, and its heartbeat is recent: it answers, or will as soon as its batch is done."""
        child = self._child
        return child is not None and child.silent_for() <= self.heartbeat_timeout_s

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    def start(self) -> None:
        """Start the worker and wait until its model is loaded and warm."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the worker process without waiting for it (several variants load in parallel)."""
        if self._stopping.is_set():
            raise RuntimeError(f"the inference worker of variant {self.name!r} is stopping")
        parent, child = self._context.Pipe()
        heartbeat = self._context.Value("d", time.monotonic(), lock=False)
        process = self._context.Process(
            target=_serve_batches,
            args=(child, self.spec, self._buffers, heartbeat, self._lifeline.end),
            name=f"blockdrop-worker-{self.name}",
        )
        # not under the lock: the start waits for the fork server, which neither a batch nor ``stop`` may wait for
        # (a stopped fork server would hold them; ForkStart ends one that does not fork in time)
        self._forking = ForkStart(process)
        try:
            forked = self._forking.result()
        finally:
            self._forking = None
            child.close()
        with self._lock:
            self._starting = _Child(forked, parent, heartbeat)
            if self._stopping.is_set():  # stopped while it started: ``stop`` did not see it
                self._starting = None
                forked.kill()
                raise RuntimeError(f"the inference worker of variant {self.name!r} is stopping")

    def wait_ready(self) -> None:
        """Wait for the launched worker's model to be ready, then serve batches with it."""
        starting = self._starting  # kept there while it loads, so that ``stop`` can end it
        if starting is None:
            raise RuntimeError(f"the inference worker of variant {self.name!r} was not launched")
        try:
            timeout = start_timeout_s(self.spec.execution)
            if not starting.connection.poll(timeout):
                starting.process.kill()
                raise RuntimeError(f"the inference worker of variant {self.name!r} did not start in {timeout:g} s")
            try:
                _, state = starting.connection.recv()
            except EOFError:
                starting.process.join(5)
                raise RuntimeError(
                    f"the inference worker of variant {self.name!r} exited while loading "
                    f"(exit code {starting.process.exitcode})"
                ) from None
        finally:
            self._starting = None
        with self._lock:
            if self._stopping.is_set():  # stopped while this one loaded
                starting.process.kill()
                starting.process.join(5)
                return
            self._child = starting
            self.cuda_graphs = bool(state["cuda_graphs"])
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
                self._lose(child, exited=not child.process.is_alive())
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
        """End the worker (and one that is still loading); never starts another. A hung one is killed at once."""
        self._stopping.set()
        forking = self._forking
        if forking is not None:
            forking.abandon()
        starting = self._starting
        if starting is not None:  # loading: nothing to finish
            starting.process.kill()
        child = self._child
        if child is not None and child.silent_for() > self.heartbeat_timeout_s:
            child.process.kill()  # its batch in flight fails now, which frees the lock
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(OSError):  # already gone
                child.connection.send(None)
            child.process.join(timeout)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout)
        if self._supervisor.is_alive() and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout)
        if starting is not None:
            starting.process.join(timeout)

    def _supervise(self) -> None:
        """Notice a worker that died or went silent, kill it, and start a new one for any lost worker. Reading the
        heartbeat needs no lock: a batch in flight on a hung worker holds it until the kill ends that batch."""
        while not self._stopping.wait(self.check_every_s):
            child = self._child
            if child is not None and (not child.process.is_alive() or child.silent_for() > self.heartbeat_timeout_s):
                exited = not child.process.is_alive()
                if not exited:
                    log.error(
                        "the inference worker of variant %s (pid %s) sent no heartbeat for %.1f s; killing it",
                        self.name,
                        child.process.pid,
                        child.silent_for(),
                    )
                    child.process.kill()
                with self._lock:
                    lost = self._child is child
                    if lost:
                        self._lose(child, exited)
                if lost:  # outside the lock: a stopped fork server would report its end late
                    child.process.join(5)
            if self._child is None and not self._stopping.is_set():
                self._restart()

    def _lose(self, child: _Child, exited: bool) -> None:
        """Forget a child that died (``exited``) or stopped answering (called with the lock held, so it waits for
        nothing: its parent, the fork server, reaps it)."""
        what = how_it_ended(child.process.exitcode) if exited else "stopped answering"
        log.error("the inference worker of variant %s (pid %s) %s", self.name, child.process.pid, what)
        self._child = None
        if child.process.is_alive():
            child.process.kill()

    def _restart(self) -> None:
        started = time.monotonic()
        try:
            self.start()
        except ForkServerEnded:  # not the worker's fault: the next round starts it again, from a new fork server
            if not self._stopping.is_set():
                log.warning("the fork server did not fork variant %s's inference worker; starting it again", self.name)
            return
        # any failure, not only the expected ones (the fork server gone while it forked: OSError, EOFError): an
        # unexpected one ending this thread would leave the variant down for good
        except Exception:
            if not self._stopping.is_set():
                # a worker that cannot start (its artifact gone, memory short) is tried again, but ever more
                # slowly: a start costs a whole model load, and a tight loop of them would starve the service
                self._failed_starts += 1
                backoff = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (self._failed_starts - 1))
                log.exception(
                    "could not restart the inference worker of variant %s; trying again in %.0f s", self.name, backoff
                )
                self._stopping.wait(backoff)
            return
        self._failed_starts = 0
        if self._stopping.is_set():
            return
        log.warning("restarted the inference worker of variant %s in %.1f s", self.name, time.monotonic() - started)
        if self._on_restart is not None:
            self._on_restart()
