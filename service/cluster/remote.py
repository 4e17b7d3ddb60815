"""The ingress side of a variant's deployment: the data plane's executor for a variant that runs elsewhere.

Each image is one call to the deployment, which batches the calls it receives (``deployments.VariantModel``).
Ray's errors become the service's: a full queue in front of the deployment is 503 with Retry-After, a replica
that died is asked once more (Ray routes to another or to its replacement) and otherwise 503; the caller's
deadline (504) cancels the call. The compute figures of each answer go into this replica's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


class RemoteVariant:
    def __init__(
        self, name: str, handle: DeploymentHandle, metrics: ServiceMetrics, full_flops: int, retry_after_s: int
    ):
        self.name = name
        self.handle = handle
        self.metrics = metrics
        self.full_flops = full_flops
        self.retry_after_s = retry_after_s
        self.alive = False  # until the deployment first answers a ping
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

    def submit(self, tensor: Tensor, deadline: float, threshold: float | None = None) -> asyncio.Future:
        if not self._accepting:
            raise Overloaded(f"variant {self.name!r} is shutting down", self.retry_after_s)
        return asyncio.ensure_future(self._call(tensor.numpy(), deadline, threshold))

    # ----------------------------------------------------------------------------------------------------------
    async def ping(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self.handle.ping.remote()
            self.alive = True
        except Exception:  # any failure to answer: not ready
            self.alive = False
        return self.alive

    async def _call(self, image: np.ndarray, deadline: float, threshold: float | None) -> ImageResult:
        self._in_flight += 1
        sent = time.monotonic()
        try:
            answer = await self._answer(image, deadline, threshold)
        finally:
            self._in_flight -= 1
        return self._result(answer, time.monotonic() - sent)

    async def _answer(self, image: np.ndarray, deadline: float, threshold: float | None) -> dict[str, Any]:
        for attempt in range(2):
            response = self.handle.infer.remote(image, threshold, deadline - time.monotonic())
            try:
                return await response
            except asyncio.CancelledError:  # the request's deadline passed, or the client left
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

    def _result(self, answer: dict[str, Any], round_trip_s: float) -> ImageResult:
        mask = torch.from_numpy(answer["keep_mask"])
        flops = int(answer["flops"])
        self.metrics.observe_images(self.name, mask.unsqueeze(0), torch.tensor([flops]), self.full_flops)
        for size, seconds in answer["batches"]:  # the deployment's batches since its last answer
            self.metrics.observe_batch_timing(self.name, size, seconds)
        return ImageResult(
            logits=torch.from_numpy(answer["logits"]),
            keep_mask=mask,
            flops=flops,
            # all the time but the model's: Ray's routing, the deployment's queue, the transfers
            queue_seconds=max(round_trip_s - answer["inference_seconds"], 0.0),
            inference_seconds=answer["inference_seconds"],
            batch_size=answer["batch_size"],
        )


def _service_error(name: str, error: ray_errors.RayTaskError) -> ServiceError:
    """The service's own error raised in the deployment (overloaded, deadline) as it was; anything else a 500."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, TimeoutError):
        return DeadlineExceeded("no answer within the request's deadline")
    log.error("variant %s failed: %s", name, error)
    return ServiceError(f"inference failed on variant {name!r}: {type(cause or error).__name__}")
