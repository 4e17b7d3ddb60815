"""The ingress side of a variant's deployment: the data plane's executor for a variant that runs elsewhere.

The images submitted in one turn of the event loop go to the deployment in one call, and the deployment batches
what it receives (``deployments.VariantModel``).
Ray's errors become the service's: a full queue in front of the deployment is 503 with Retry-After, a replica
that died is asked once more (Ray routes to another or to its replacement) and otherwise 503, a deployment with no
running replica (as the ingress last heard from Ray's controller) 503 at once; the caller's deadline (504) cancels
the call. The compute figures of each answer go into this replica's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve.handle import DeploymentHandle
from torch import Tensor

from service.batching import ImageResult
from service.errors import DeadlineExceeded, Overloaded, ServiceError, Unavailable
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# a replica gone: another one (or its replacement) may take the call
REPLICA_LOST = (
    ray_errors.ActorDiedError,
    ray_errors.ActorUnavailableError,
    ray_errors.RayActorError,
    serve_errors.ReplicaUnavailableError,
    serve_errors.DeploymentUnavailableError,
)


@dataclass
class _Pending:
    image: np.ndarray
    deadline: float
    threshold: float | None
    future: asyncio.Future


class RemoteVariant:
    def __init__(
        self,
        name: str,
        handle: DeploymentHandle,
        metrics: ServiceMetrics,
        full_flops: int,
        retry_after_s: int,
        max_images_per_call: int = 32,
    ):
        self.name = name
        self.max_images_per_call = max_images_per_call
        self._pending: list[_Pending] = []
        self._calls: set[asyncio.Task] = set()
        self.handle = handle
        self.metrics = metrics
        self.full_flops = full_flops
        self.retry_after_s = retry_after_s
        self.alive = False  # until the deployment first answers a ping
        # replicas Ray reports running (None: not known yet); none, and a call would wait for a replacement
        self.running_replicas: int | None = None
        # whether CUDA graphs run, as the replica last pinged said (None: none has answered yet)
        self.graphs_in_use: bool | None = None
        self._in_flight = 0
        self._accepting = False

    # the executor interface (service.dataplane.Executor) -----------------------------------------------------
    def start(self) -> None:
        self._accepting = True

    def stop(self, timeout: float | None = None) -> None:
        self._accepting = False

    def expect(self, images: int) -> None:
        """Batching happens in the deployment, from the calls it has: nothing to announce."""

    def depth(self) -> int:
        """Images this replica has sent to the deployment and not yet had back."""
        return self._in_flight

    def submit(
        self, tensor: Tensor, deadline: float, threshold: float | None = None, position: int = 0
    ) -> asyncio.Future:
        """Queue one image for the deployment: the images submitted in one turn of the event loop (the requests of
        one moment) travel in one call, so Ray's per-call cost is paid per batch, not per image. (``position`` is the
        local batcher's; the deployment's replicas queue by count.)"""
        if not self._accepting:
            raise Overloaded(f"variant {self.name!r} is shutting down", self.retry_after_s)
        if self.running_replicas == 0:  # Ray would hold the call until a replacement runs: answer now instead
            raise Unavailable(
                f"variant {self.name!r} has no running replica (Ray is starting one); retry shortly", self.retry_after_s
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Pending(tensor.numpy(), deadline, threshold, future))
        if len(self._pending) == 1:
            loop.call_soon(self._send_pending)
        return future

    # ----------------------------------------------------------------------------------------------------------
    async def ping(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                state = await self.handle.ping.remote()
            self.alive = True
            self.graphs_in_use = bool(state["cuda_graphs"])
            if self.running_replicas == 0:  # a replica answered: the controller's count is behind, not zero
                self.running_replicas = None
        except Exception:  # any failure to answer: not ready
            self.alive = False
        return self.alive

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_images_per_call):
            call = asyncio.ensure_future(self._call(pending[start : start + self.max_images_per_call]))
            self._calls.add(call)  # held until done: the loop keeps only a weak reference to a task
            call.add_done_callback(self._calls.discard)

    async def _call(self, items: list[_Pending]) -> None:
        self._in_flight += len(items)
        sent = time.monotonic()
        try:
            answers = await self._answer(items)
        except Exception as error:  # the whole call failed: each image gets the error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._in_flight -= len(items)
        round_trip = time.monotonic() - sent
        for item, answer in zip(items, answers):
            if item.future.done():  # cancelled: its request's deadline passed
                continue
            if "error" in answer:
                item.future.set_exception(_error_from(answer["error"], self.retry_after_s))
            else:
                item.future.set_result(self._result(answer, round_trip))
        self._observe_batches(answers)

    async def _answer(self, items: list[_Pending]) -> list[dict[str, Any]]:
        images = np.stack([item.image for item in items])
        thresholds = [item.threshold for item in items]
        deadline = max(item.deadline for item in items)
        for attempt in range(2):
            response = self.handle.infer.remote(images, thresholds, deadline - time.monotonic())
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    return await response
            except TimeoutError:  # every image's deadline has passed (the data plane answers them 504)
                response.cancel()
                raise DeadlineExceeded("no answer within the request's deadline") from None
            except asyncio.CancelledError:
                response.cancel()
                raise
            except serve_errors.BackPressureError:
                raise Overloaded(
                    f"variant {self.name!r} is overloaded (its deployment's queue is full); retry shortly",
                    self.retry_after_s,
                ) from None
            except ray_errors.RayTaskError as error:  # raised in the deployment: its cause says what happened
                raise _service_error(self.name, error) from None
            except ServiceError:
                raise
            except REPLICA_LOST as error:
                log.warning("variant %s: replica lost (%s), attempt %d", self.name, type(error).__name__, attempt + 1)
                if attempt == 1 or time.monotonic() >= deadline:
                    raise Unavailable(
                        f"variant {self.name!r} lost the replica that had this request; retry shortly",
                        self.retry_after_s,
                    ) from None
        raise AssertionError("unreachable")

    def _observe_batches(self, answers: list[dict[str, Any]]) -> None:
        for answer in answers:  # the deployment's batches since its last answer, each reported once
            for size, seconds in answer.get("batches", ()):
                self.metrics.observe_batch_timing(self.name, size, seconds)

    def _result(self, answer: dict[str, Any], round_trip_s: float) -> ImageResult:
        mask = torch.from_numpy(answer["keep_mask"])
        flops = int(answer["flops"])
        self.metrics.observe_images(self.name, mask.unsqueeze(0), torch.tensor([flops]), self.full_flops)
        return ImageResult(
            logits=torch.from_numpy(answer["logits"]),
            keep_mask=mask,
            flops=flops,
            # all the time but the model's: Ray's routing, the deployment's queue, the transfers
            queue_seconds=max(round_trip_s - answer["inference_seconds"], 0.0),
            inference_seconds=answer["inference_seconds"],
            batch_size=answer["batch_size"],
        )


def _error_from(error: dict[str, Any], retry_after_s: int) -> ServiceError:
    """One image's error, as the deployment sent it back (the others in its call may have succeeded)."""
    headers = {"Retry-After": str(retry_after_s)} if error["status"] == 503 else None
    return ServiceError(error["message"], error["status"], headers)


def _service_error(name: str, error: ray_errors.RayTaskError) -> ServiceError:
    """The service's own error raised in the deployment (overloaded, deadline) as it was; anything else a 500."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, TimeoutError):
        return DeadlineExceeded("no answer within the request's deadline")
    log.error("variant %s failed: %s", name, error)
    return ServiceError(f"inference failed on variant {name!r}: {type(cause or error).__name__}")
