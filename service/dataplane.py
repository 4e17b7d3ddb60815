"""Protocol-neutral operations behind the HTTP routes: classify, infer on tensors, feedback, model listing.

The v1 JSON routes and the Open Inference Protocol v2 routes are thin layers over this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from anyio import to_thread
from torch import Tensor

from service.accounting import current_account
from service.adaptive import ThresholdController
from service.batching import ImageResult
from service.budget import budget_threshold, parse_budget
from service.config import Settings
from service.decoding import Decoder
from service.errors import (
    BadInput,
    DeadlineExceeded,
    NotFound,
    Overloaded,
    ServiceError,
    Unavailable,
    Unprocessable,
)
from service.feedback import ServedPrediction
from service.imaging import ImagePreprocessor
from service.loop_lag import LoopLag
from service.metrics import ServiceMetrics
from service.request_log import current_record, detach_record, hashed
from service.routing import Router
from service.runtime_settings import RuntimeSettings
from service.tensors import (
    INLINE_TENSOR_VALUES,
    InputTensor,
    OutputTensor,
    image_shapes,
    images_from,
    outputs_from,
    requested_outputs,
    value_count,
)
from service.variants import Variant

# the tensor protocols' name for "whichever variant the A/B split gives" (a variant of that name wins)
VIRTUAL_MODEL = "default"
MODEL_VERSION = "1"  # the one version the tensor protocols serve each model as (their metadata's "versions")


@dataclass(frozen=True)
class Compute:
    """The threshold a request runs at (None for a plain network), the budget it asked for, and a note."""

    threshold: float | None
    budget: float | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"threshold": self.threshold}
        if self.budget is not None:
            shown["budget"] = self.budget
        if self.note is not None:
            shown["note"] = self.note
        return shown


class Executor(Protocol):
    """What runs a variant's images, from a backend: a micro-batcher in this process over worker processes or a
    thread (service/local_backend.py), a client of the variant's model servers (service/multiprocess), or of its
    deployment on a Ray cluster (service/cluster). ``submit`` queues one image and returns a future of its
    ImageResult.

    Optional, read with a default: ``alive`` (readiness; default True), ``answering`` (whether the variant takes
    images now, for routing and admission; default True), ``refuse_if_overloaded()`` (admission's queue check;
    default: none here, the executor answers for itself) and ``graphs_in_use`` (whether the processes running the
    variant captured CUDA graphs, None where unknown; default: the variant as loaded here says)."""

    def submit(
        self, tensor: Tensor, deadline: float, threshold: float | None = None, position: int = 0
    ) -> asyncio.Future: ...
    def expect(self, images: int) -> None: ...
    def depth(self) -> int: ...
    def start(self) -> None: ...
    def stop(self, timeout: float | None = None) -> None: ...


class Store(Protocol):
    """Recent predictions awaiting feedback: in this process, or shared by the replicas of a Ray deployment."""

    async def remember(self, entries: list[tuple[str, str, int]]) -> None: ...
    async def claim(self, request_id: str) -> ServedPrediction | None: ...


@dataclass
class Served:
    variant: Variant
    results: list[ImageResult]
    started: float


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        variants: dict[str, Variant],
        metrics: ServiceMetrics,
        executors: dict[str, Executor],
        store: Store,
        liveness: Callable[[], str | None] | None = None,
    ):
        """``executors`` (one per variant, from a backend) run the models; ``store`` keeps predictions for
        feedback; ``liveness``, where the backend has a reason to be restarted that this process cannot see
        (several API servers: their supervisor stopped watching), says it."""
        self.settings = settings
        self._liveness = liveness
        self.variants = variants
        self.metrics = metrics
        self.router = Router(
            {v.name: v.weight for v in settings.variants}, settings.shadow_variant, settings.shadow_fraction
        )
        # the operator's settings: each variant's default threshold and A/B weight (service/runtime_settings.py)
        self.runtime = RuntimeSettings(variants, self.router, metrics, settings.budget_levels)
        self.preprocessors = {
            name: ImagePreprocessor(v.manifest.input, settings.max_pixels, settings.max_image_scale)
            for name, v in variants.items()
        }
        self.decoder = Decoder(
            settings.decode_memory_mb * 2**20,
            settings.decode_threads or max(1, len(os.sched_getaffinity(0)) - 1),
            settings.queue_wait_budget_ms / 1000,
            settings.retry_after_s,
        )
        adaptive = {v.name: v.adaptive for v in settings.variants if v.adaptive is not None}
        self.controllers = {
            name: ThresholdController(adaptive[name], (lambda v=variant: v.threshold), time.monotonic)
            for name, variant in variants.items()
            if name in adaptive and variant.mode == "blockdrop"
        }
        self.executors: dict[str, Executor] = {name: self._describe(v, executors[name]) for name, v in variants.items()}
        self.store = store
        self.loop_lag = LoopLag()
        self.warmed_up = False
        self.stopping = False  # told to stop: not ready, but still serving (the pre-stop period)
        self.draining_since = float("inf")  # the monotonic time draining began (inf: not draining)
        self._background: set[asyncio.Task] = set()

    @property
    def draining(self) -> bool:
        """Shutting down: new requests are refused (503), those in flight finish."""
        return self.draining_since != float("inf")

    @property
    def ready(self) -> bool:
        """Every variant loaded and warm, every executor alive (every worker answering), and not shutting down."""
        return self.not_ready() is None

    def not_ready(self) -> str | None:
        """Why readiness answers 503 (None: ready)."""
        if self.stopping or self.draining:
            return "shutting down"
        if not self.warmed_up:
            return "loading"
        down = [name for name, executor in self.executors.items() if not getattr(executor, "alive", True)]
        if down:
            return f"no inference worker answers for {', '.join(down)}; it is being replaced"
        return None

    def not_live(self) -> str | None:
        """Why the service should be restarted (None: it is live). Never while it drains, which is not a fault."""
        if self._liveness is None or self.stopping or self.draining:
            return None
        return self._liveness()

    def _describe(self, variant: Variant, executor: Executor) -> Executor:
        """The variant's series, created at zero (its queue's depth read from its executor)."""
        self.metrics.queue_depth.labels(variant.name).set_function(executor.depth)
        self.metrics.init_variant(
            variant.name,
            variant.manifest.name,
            variant.manifest.kind,
            variant.mode,
            variant.threshold if variant.mode == "blockdrop" else None,
            variant.num_blocks,
        )
        if variant.mode == "blockdrop":
            self.metrics.policy_threshold.labels(variant.name).set_function(lambda: self.live_threshold(variant))
            self.metrics.degraded_images.labels(variant.name)
        return executor

    # lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every variant's executor, and (in the running event loop) the loop-lag measure admission reads."""
        for executor in self.executors.values():
            executor.start()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing waits for one
            self.loop_lag.start()

    def stop_being_ready(self) -> None:
        """Readiness answers 503 from now on; requests are still served (the pre-stop period)."""
        self.stopping = True

    def begin_shutdown(self) -> None:
        if not self.draining:
            self.draining_since = time.monotonic()
        self.stopping = True

    async def stop(self) -> None:
        """Stop taking requests, let shadow runs finish, and stop every executor (the backend stops what runs
        behind them)."""
        self.begin_shutdown()
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.request_timeout_s)
        await self.loop_lag.stop()
        for executor in self.executors.values():
            await to_thread.run_sync(executor.stop, self.settings.request_timeout_s)

    # operations ----------------------------------------------------------------------------------------------
    def variant(self, name: str) -> Variant:
        """The variant named ``name`` (404 for an unknown one)."""
        return self.runtime.variant(name)

    def route(self, override: str | None, client_key: str | None) -> Variant:
        """The variant a request runs on; unkeyed requests avoid variants whose workers do not answer."""
        self._refuse_if_draining()
        record = current_record()
        if record is not None and client_key is not None:
            record.client = hashed(client_key)
        # only an unkeyed, unpinned request is steered around a variant that does not answer (service/routing.py)
        steered = not override and not client_key
        unavailable = [name for name in self.variants if not self.available(name)] if steered else ()
        return self.variants[self.router.choose(override, client_key, unavailable)]

    def available(self, name: str) -> bool:
        """Whether variant ``name`` takes images now, as its executor says: one of its worker processes or model
        servers answers, or it runs in this process (service/local_backend.py, service/multiprocess). (A Ray
        deployment answers for itself: Ray holds a call while it replaces a replica, and the executor refuses at
        once when it has none running: service/cluster/remote.py.)"""
        return getattr(self.executors[name], "answering", True)

    def live_threshold(self, variant: Variant) -> float:
        """The default threshold now: the operator's, or above it while the load controller degrades."""
        controller = self.controllers.get(variant.name)
        return controller.threshold() if controller is not None else variant.threshold

    def compute_for(self, variant: Variant, budget: str | None) -> Compute:
        """The policy threshold a request runs at: the variant's own, or the one its compute budget maps to on the
        variant's calibrated curve. A plain network has no threshold and says that it ignored a budget, once it is
        a valid one: whether a budget is well formed does not depend on the variant a request was routed to."""
        if variant.mode != "blockdrop":
            if budget is None:
                return Compute(None, None, None)
            parse_budget(budget, self.settings.budget_levels)
            return Compute(None, None, f"ignored: variant {variant.name!r} runs every block")
        if budget is None:
            return Compute(self.live_threshold(variant), None, None)
        levels, calibration = self.settings.budget_levels, variant.manifest.calibration
        threshold, fraction = budget_threshold(budget, levels, calibration, variant.name)
        return Compute(threshold, fraction, None)

    async def classify(
        self, variant: Variant, images: list[bytes], top_k: int, budget: str | None = None, named: bool = False
    ) -> list[dict[str, Any]]:
        """Decode, batch and run ``images`` on ``variant`` (at the threshold ``budget`` maps to, if given); one
        response dict per image. ``named``: the images of a JSON batch, an image's refusal naming it."""
        if not 1 <= top_k <= self.settings.max_top_k:
            raise Unprocessable(f"top_k must be between 1 and {self.settings.max_top_k}")
        compute = self.compute_for(variant, budget)
        started = time.monotonic()
        executor = self.executors[variant.name]
        self._admit(variant, executor)  # before decoding: a refusal under overload must cost next to nothing
        preprocess = self.preprocessors[variant.name]
        executor.expect(len(images))
        try:
            tensors = await self.decoder.tensors(preprocess, images, named)
        finally:
            executor.expect(-len(images))
        # every image carries its threshold: worker processes hold a copy of the variant, not its live setting
        own = compute.threshold
        served = Served(variant, await self._run(variant, tensors, started, own), started)
        responses = [self._classification(served, result, top_k, compute) for result in served.results]
        await self.store.remember([(r["request_id"], variant.name, r["prediction"]["class_id"]) for r in responses])
        self._maybe_shadow(variant, images, [r["prediction"]["class_id"] for r in responses])
        return responses

    async def explain(self, variant: Variant, image: bytes, budget: str | None = None) -> dict[str, Any]:
        """What the policy of ``variant`` sees in one image: each block's keep-probability and the mask that the
        threshold (the variant's own, or the one ``budget`` maps to) draws from them; both None for a variant that
        runs every block. The policy runs alone, in a thread of this process (the variants are loaded here also when
        worker processes serve them): no batching, no metrics, no feedback, since this is no inference request."""
        compute = self.compute_for(variant, budget)
        (tensor,) = await self.decoder.tensors(self.preprocessors[variant.name], [image])
        probabilities: list[float] | None = None
        mask: str | None = None
        if variant.has_policy and compute.threshold is not None:
            probabilities, keep = await to_thread.run_sync(variant.policy_decision, tensor, compute.threshold)
            mask = "".join("1" if kept else "0" for kept in keep)
        return {
            "variant": variant.name,
            "model": variant.manifest.name,
            "blocks": variant.num_blocks,
            "stages": variant.stage_blocks,
            "keep_probabilities": probabilities,
            "mask": mask,
            "compute": compute.as_dict(),
        }

    def model_ready(self, model_name: str) -> bool:
        """One model's readiness: the variant's own workers answer (the virtual model: the whole service is ready)."""
        self.knows(model_name)
        if model_name not in self.variants:
            return self.ready
        return self.warmed_up and not self.stopping and not self.draining and self.available(model_name)

    def knows(self, model_name: str, version: str = "") -> None:
        """Refuse (404) a model name that is neither a variant nor the virtual A/B model, or a version (asked for by
        a tensor protocol) other than the one each model is served as."""
        if model_name not in self.variants and model_name != VIRTUAL_MODEL:
            known = ", ".join([*self.variants, VIRTUAL_MODEL])
            raise NotFound(f"unknown model {model_name!r}; known: {known}")
        if version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model {model_name!r} has no version {version[:40]!r}: it is served as version {MODEL_VERSION} "
                "(or ask without a version)"
            )

    def tensor_model(self, model_name: str, override: str | None = None, client_key: str | None = None) -> Variant:
        """The variant a tensor request runs on: the one named, or for the virtual model ``default`` the one the
        A/B split gives (override, then sticky client key, then weights), exactly as ``/v1/classify`` routes."""
        self.knows(model_name)
        if model_name in self.variants:
            return self.variants[model_name]
        return self.route(override, client_key)

    async def infer_tensors(
        self,
        variant: Variant,
        inputs: list[InputTensor],
        output_names: list[str] | None = None,
        compute: Compute | None = None,
    ) -> list[OutputTensor]:
        """The tensor protocols' inference: one image tensor in, the named outputs (default: all) out, at
        ``compute``'s threshold (from ``compute_for``; default: the variant's own)."""
        if len(inputs) != 1:
            raise BadInput(f"{variant.name} takes exactly one input tensor, got {len(inputs)}")
        wanted = requested_outputs(output_names)
        build = partial(images_from, inputs[0], variant.manifest.input, self.settings.max_images_per_request)
        batch = await to_thread.run_sync(build) if value_count(inputs[0]) > INLINE_TENSOR_VALUES else build()
        self._refuse_if_draining()
        own = (compute or self.compute_for(variant, None)).threshold
        results = await self._run(variant, list(batch), time.monotonic(), own)
        return outputs_from(results, len(variant.manifest.classes), variant.num_blocks, wanted)

    @property
    def max_tensor_values(self) -> int:
        """The most values one tensor request may carry: the request's image limit at the largest input size."""
        largest = max(3 * v.manifest.input.height * v.manifest.input.width for v in self.variants.values())
        return self.settings.max_images_per_request * largest

    def model_metadata(self, model_name: str) -> dict[str, Any]:
        """Inputs and outputs of one model, as the tensor protocols describe them: one input per name, ``images``
        (normalised FP32) and ``pixels`` (UINT8); for the virtual model, -1 where the variants differ."""
        self.knows(model_name)
        chosen = [self.variants[model_name]] if model_name in self.variants else list(self.variants.values())

        def common(values: list[int]) -> int:
            return values[0] if len(set(values)) == 1 else -1

        shapes = image_shapes(chosen[0].manifest.input)
        classes = common([len(v.manifest.classes) for v in chosen])
        blocks = common([v.num_blocks for v in chosen])
        return {
            "name": model_name,
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": [-1, *shapes["FP32"]]},
                {"name": "pixels", "datatype": "UINT8", "shape": [-1, *shapes["UINT8"]]},
            ],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "keep_mask", "datatype": "BOOL", "shape": [-1, blocks]},
                {"name": "flops", "datatype": "INT64", "shape": [-1]},
            ],
        }

    async def feedback(self, request_id: str, label: int | str) -> dict[str, Any]:
        served = await self.store.claim(request_id)
        if served is None:
            raise NotFound(
                f"no recent prediction with request_id {request_id!r} (unknown, expired, or already given feedback)"
            )
        classes = self.variants[served.variant].manifest.classes
        try:
            label_id = _class_id(label, classes)
        except Unprocessable:  # a bad label is the client's mistake: the prediction still awaits its feedback
            await self.store.remember([(request_id, served.variant, served.class_id)])
            raise
        correct = label_id == served.class_id
        self.metrics.feedback.labels(served.variant, "right" if correct else "wrong").inc()
        return {
            "request_id": request_id,
            "variant": served.variant,
            "predicted": served.class_id,
            "label": label_id,
            "correct": correct,
        }

    def models(self) -> list[dict[str, Any]]:
        shares = self.runtime.traffic_shares()
        return [
            variant.summary()
            | {
                "cuda_graphs": self.graphs_in_use(name),
                "traffic_share": shares[name],
                "shadow": name == self.settings.shadow_variant,
                "ready": self.warmed_up and self.available(name),
            }
            for name, variant in self.variants.items()
        ]

    def graphs_in_use(self, name: str) -> bool:
        """Whether the variant runs captured CUDA graphs: as the processes that run it report (the executor's
        ``graphs_in_use``), else as loaded here (a model that runs in this process, or none has reported yet)."""
        reported = getattr(self.executors[name], "graphs_in_use", None)
        return reported if reported is not None else self.variants[name].cuda_graphs

    def apply_changes(self, changes: dict[str, dict[str, float]]) -> None:
        """Take operator changes made on another replica of this service (``RuntimeSettings.apply_changes``)."""
        self.runtime.apply_changes(changes)

    @property
    def on_update(self) -> Callable[[str, dict[str, float]], None] | None:
        """Called after an operator's change, with the variant and what changed (``RuntimeSettings.on_update``:
        a backend shares it)."""
        return self.runtime.on_update

    @on_update.setter
    def on_update(self, hook: Callable[[str, dict[str, float]], None] | None) -> None:
        self.runtime.on_update = hook

    # internals -----------------------------------------------------------------------------------------------
    def _admit(self, variant: Variant, executor: Executor) -> None:
        """Refuse at once (503, Retry-After) what would not be served in time: a variant whose workers do not
        answer; any request while the event loop runs later than half the queue-wait budget (requests wait that
        long before they are read: service/loop_lag.py); a request whose variant's queue would keep an image past
        the budget (``MicroBatcher.expected_wait``)."""
        if not self.available(variant.name):
            raise Unavailable(
                f"variant {variant.name!r} has no inference worker answering; it is being restarted, retry shortly",
                self.settings.retry_after_s,
            )
        budget_s = self.settings.queue_wait_budget_ms / 1000
        if self.loop_lag.seconds > budget_s / 2:
            raise Overloaded(
                f"the service is overloaded: requests wait about {self.loop_lag.seconds * 1000:.0f} ms to be read, "
                f"over half the {budget_s * 1000:.0f} ms queue-wait budget; retry shortly",
                self.settings.retry_after_s,
            )
        refuse_if_overloaded = getattr(executor, "refuse_if_overloaded", None)  # a local queue; a remote one: its own
        if refuse_if_overloaded is not None:
            refuse_if_overloaded()

    def _refuse_if_draining(self) -> None:
        """503 for a request that arrived once draining had begun. One that arrived before (its headers did: a body
        still on its way when the pre-stop period ended) is in flight, and in-flight requests are served."""
        if not self.draining:
            return
        account = current_account()
        if account is not None and account.started < self.draining_since:
            return
        raise Overloaded("the service is shutting down; retry on another instance", self.settings.retry_after_s)

    async def _run(
        self, variant: Variant, tensors: list[Tensor], started: float, threshold: float | None = None
    ) -> list[ImageResult]:
        executor = self.executors[variant.name]
        self._admit(variant, executor)
        if threshold is None and variant.mode == "blockdrop":
            # the live one: a worker process or a remote deployment holds a copy of the variant's setting
            threshold = self.live_threshold(variant)
        deadline = started + self.settings.request_timeout_s
        futures: list[asyncio.Future] = []
        try:
            for position, tensor in enumerate(tensors):
                futures.append(executor.submit(tensor, deadline, threshold, position))
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                results = await asyncio.gather(*futures)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the {self.settings.request_timeout_s:g} s deadline") from None
        finally:
            for future in futures:
                future.cancel()  # no-op for finished ones; the batcher skips cancelled ones
        queue_wait = self.metrics.queue_wait.labels(variant.name)
        controller = self.controllers.get(variant.name)
        for result in results:
            queue_wait.observe(result.queue_seconds)
            if controller is not None:
                controller.observe(result.queue_seconds)
        if threshold is not None and variant.mode == "blockdrop" and threshold > variant.threshold:
            self.metrics.degraded_images.labels(variant.name).inc(len(results))
        record = current_record()
        if record is not None:
            blocks = sum(int(result.keep_mask.sum()) for result in results)
            record.add_results(variant.name, blocks, sum(result.flops for result in results), len(results))
        return results

    def _classification(self, served: Served, result: ImageResult, top_k: int, compute: Compute) -> dict[str, Any]:
        variant = served.variant
        classes = variant.manifest.classes
        # plain Python from here: per-element tensor access costs microseconds each on the event loop
        probabilities = result.logits.softmax(0).tolist()
        best = sorted(range(len(probabilities)), key=probabilities.__getitem__, reverse=True)[:top_k]
        ranked = [{"class_id": i, "label": classes[i], "confidence": round(probabilities[i], 6)} for i in best]
        mask = result.keep_mask.tolist()
        used = sum(mask)
        request_id = uuid.uuid4().hex
        total_ms = (time.monotonic() - served.started) * 1000
        return {
            "request_id": request_id,
            "variant": variant.name,
            "model": variant.manifest.name,
            "prediction": ranked[0],
            "top_k": ranked,
            "blocks": {
                "used": used,
                "total": len(mask),
                "skipped": len(mask) - used,
                "mask": "".join("1" if keep else "0" for keep in mask),
            },
            "flops": {
                "executed": result.flops,
                "full": variant.full_flops,
                "ratio": round(result.flops / variant.full_flops, 6),
            },
            "compute": compute.as_dict(),
            "latency_ms": {
                "total": round(total_ms, 3),
                "queue": round(result.queue_seconds * 1000, 3),
                "inference": round(result.inference_seconds * 1000, 3),
            },
        }

    def _maybe_shadow(self, served: Variant, images: list[bytes], predictions: list[int]) -> None:
        shadow = self.router.shadow_for(served.name)
        if shadow is None:
            return
        task = asyncio.create_task(self._shadow(served.name, self.variants[shadow], images, predictions))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(self, served: str, shadow: Variant, images: list[bytes], predictions: list[int]) -> None:
        detach_record()  # a shadow run is not part of the request it copies
        preprocess = self.preprocessors[shadow.name]
        try:
            tensors = await self.decoder.tensors(preprocess, images)
            results = await self._run(shadow, tensors, time.monotonic())
        except ServiceError as error:
            if error.status_code not in (503, 504):  # busy, restarting or late: the comparison is skipped
                raise
            self.metrics.shadow.labels(served, shadow.name, "skipped").inc(len(images))
            return
        for result, served_class in zip(results, predictions):
            outcome = "agree" if int(result.logits.argmax()) == served_class else "disagree"
            self.metrics.shadow.labels(served, shadow.name, outcome).inc()


def _class_id(label: int | str, classes: list[str]) -> int:
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(classes):
            return label
        raise Unprocessable(f"label {label} is out of range: class ids go from 0 to {len(classes) - 1}")
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    raise Unprocessable(f"label {label!r} is neither a class id nor one of the class names")
