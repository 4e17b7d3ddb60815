"""Every Prometheus metric the service exports, in one registry per app (so tests and apps stay apart).

Names start with ``blockdrop_``, use base units (seconds, FLOPs) and carry a ``variant`` label wherever they are
per variant. The README's metrics table lists them all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from torch import Tensor

from models.blockdrop import InferenceResult

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def latency_buckets(per_decade: int) -> tuple[float, ...]:
    """Bucket bounds in seconds: ``per_decade`` a decade from 1 to 100 ms (a multiple of 12), 12 a decade from
    0.46 ms to 1 ms and from 100 ms to 10 s."""
    step, fine = per_decade // 12, 2 * per_decade
    exponents = (*range(-4 * step, 0, step), *range(fine), *range(fine, 2 * fine + 1, step))
    return tuple(float(f"{10 ** (k / per_decade) / 1000:.4g}") for k in exponents)


# End-to-end latency: 48 buckets a decade (each edge 1.049x the one before) from 1 to 100 ms, where a service's
# latencies live, and 12 a decade (1.21x) down to 0.46 ms and up to 10 s. A rollout's latency guardrail bounds a
# quantile by the edges of the buckets it falls in (service.sequential.quantile_bounds), so the width of two buckets
# is what it cannot tell apart: 1.10x here, against its default limit of 1.5x. With 24 a decade (1.21x) a variant
# 1.3x as slow was shown within the limit by the end of bench ab-simulation's run in 32 % of experiments; now 98.5 %.
REQUEST_LATENCY_BUCKETS = latency_buckets(48)
FLOPS_BUCKETS = (1e7, 2e7, 3e7, 4e7, 5e7, 6e7, 7e7, 8e7, 9e7, 1e8, 1.2e8, 1.4e8, 1.6e8, 2e8, 3e8, 5e8, 1e9, 1e10)
SKIPPED_BUCKETS = (*range(0, 16), 20, 25, 30, 40, 54)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "blockdrop_requests", "HTTP requests by variant and status code", ["variant", "status"], registry=r
        )
        self.images = Counter("blockdrop_images", "Images classified", ["variant"], registry=r)
        self.latency = Histogram(
            "blockdrop_request_latency_seconds",
            "End-to-end request latency",
            ["variant"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "blockdrop_queue_wait_seconds",
            "Time an image waited for its batch",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "blockdrop_inference_seconds", "Model time per batch", ["variant"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "blockdrop_batch_size", "Images per executed batch", ["variant"], buckets=BATCH_BUCKETS, registry=r
        )
        self.flops_per_image = Histogram(
            "blockdrop_flops_per_image",
            "Executed FLOPs per image (policy included)",
            ["variant"],
            buckets=FLOPS_BUCKETS,
            registry=r,
        )
        self.executed_flops = Counter(
            "blockdrop_executed_flops", "FLOPs executed (policy included)", ["variant"], registry=r
        )
        self.full_flops = Counter(
            "blockdrop_full_flops", "FLOPs the full network would have executed", ["variant"], registry=r
        )
        self.blocks_skipped = Histogram(
            "blockdrop_blocks_skipped",
            "Residual blocks skipped per image",
            ["variant"],
            buckets=SKIPPED_BUCKETS,
            registry=r,
        )
        self.block_executions = Counter(
            "blockdrop_block_executions", "Images that ran each residual block", ["variant", "block"], registry=r
        )
        self.queue_depth = Gauge(
            "blockdrop_queue_depth", "Images waiting in the variant's queue", ["variant"], registry=r
        )
        self.shadow = Counter(
            "blockdrop_shadow_comparisons",
            "Shadow runs by agreement with the served prediction",
            ["variant", "shadow", "outcome"],
            registry=r,
        )
        self.feedback = Counter(
            "blockdrop_feedback", "Feedback on served predictions", ["variant", "outcome"], registry=r
        )
        self.worker_up = Gauge(
            "blockdrop_worker_up",
            "Inference worker processes of the variant that answer (0 while one restarts alone)",
            ["variant"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "blockdrop_worker_restarts",
            "Inference worker processes started again after one was lost",
            ["variant"],
            registry=r,
        )
        self.http_refusals = Counter(
            "blockdrop_http_refusals",
            "Requests the HTTP server refused itself: unparsable (400), headers or body too slow (408), "
            "headers too large (431), bodies past the memory budget (503)",
            ["status"],
            registry=r,
        )
        self.admin_changes = Counter(
            "blockdrop_admin_changes",
            "Runtime changes through PUT /v1/variants/{name}",
            ["variant", "setting"],
            registry=r,
        )
        self.policy_threshold = Gauge(
            "blockdrop_policy_threshold",
            "The live default policy threshold of each BlockDrop variant",
            ["variant"],
            registry=r,
        )
        self.degraded_images = Counter(
            "blockdrop_degraded_images",
            "Images served above the variant's default threshold by the load controller or a budget",
            ["variant"],
            registry=r,
        )
        self.rollout_decisions = Counter(
            "blockdrop_rollout_decisions",
            "Rollout decisions (start, advance, complete, rollback, pause, resume, abort)",
            ["variant", "decision"],
            registry=r,
        )
        self.rollout_share = Gauge(
            "blockdrop_rollout_share",
            "Traffic share a rollout gives the variant now, as a fraction (0 once rolled back or aborted)",
            ["variant"],
            registry=r,
        )
        self.model_info = Gauge(
            "blockdrop_model_info",
            "The model behind each variant (value 1)",
            ["variant", "model", "kind", "mode", "threshold", "blocks"],
            registry=r,
        )

    def collect(self) -> list[Metric]:
        """Every metric family as it stands: what ``/metrics`` renders (``generate_latest(metrics)``) and what
        ``service.experiment.build_experiment`` reads. On a Ray cluster a subclass reports those of every ingress
        replica together (service/cluster/deployments.py)."""
        return list(self.registry.collect())

    def own(self) -> list[Metric]:
        """The families this process counted itself, never another replica's: what a rollout adds to its shared
        evidence under this process's own key (``service/rollout_driver.py``), so that nothing counts twice."""
        return list(self.registry.collect())

    def observe_batch(self, variant: str, result: InferenceResult, seconds: float, full_flops: int) -> None:
        """Per-batch and per-image figures of one executed batch."""
        self.observe_batch_timing(variant, len(result.flops), seconds)
        self.observe_images(variant, result.keep_mask, result.flops, full_flops)

    def observe_batch_timing(self, variant: str, size: int, seconds: float) -> None:
        self.inference.labels(variant).observe(seconds)
        self.batch_size.labels(variant).observe(size)

    def observe_images(self, variant: str, keep_mask: Tensor, flops: Tensor, full_flops: int) -> None:
        """The compute of images served: ``keep_mask`` [N, blocks] bool and ``flops`` [N]."""
        n = len(flops)
        self.images.labels(variant).inc(n)
        self.executed_flops.labels(variant).inc(float(flops.sum()))
        self.full_flops.labels(variant).inc(float(full_flops) * n)
        flops_histogram = self.flops_per_image.labels(variant)
        skipped_histogram = self.blocks_skipped.labels(variant)
        blocks = keep_mask.shape[1]
        for executed, used in zip(flops.tolist(), keep_mask.sum(1).tolist()):
            flops_histogram.observe(executed)
            skipped_histogram.observe(blocks - used)
        for block, count in enumerate(keep_mask.sum(0).tolist()):
            if count:
                self.block_executions.labels(variant, str(block)).inc(count)

    def init_variant(
        self, variant: str, model: str, kind: str, mode: str, threshold: float | None, blocks: int
    ) -> None:
        """Create the variant's series at zero, so dashboards show them before the first request."""
        self.model_info.labels(
            variant, model, kind, mode, "" if threshold is None else f"{threshold:g}", str(blocks)
        ).set(1)
        for metric in (
            self.images,
            self.latency,
            self.queue_wait,
            self.inference,
            self.batch_size,
            self.flops_per_image,
            self.executed_flops,
            self.full_flops,
            self.blocks_skipped,
            self.queue_depth,
        ):
            metric.labels(variant)
        for outcome in ("right", "wrong"):
            self.feedback.labels(variant, outcome)
