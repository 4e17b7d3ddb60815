"""Wire models of ``GET /v1/experiment`` (``service/experiment.py`` builds the report) and ``POST /v1/explain``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.api.schemas import Compute


class Interval(BaseModel):
    low: float
    high: float


class Traffic(BaseModel):
    configured: float | None = Field(description="share of unpinned traffic the weights give the variant")
    observed: float | None = Field(description="share of all routed inference requests it answered (forced too)")
    requests: float


class Requests(BaseModel):
    total: float = Field(description="inference requests routed to the variant, any status")
    errors: float = Field(description="those answered with a status other than 2xx")
    by_status: dict[str, float]
    per_second: float | None = Field(
        description="over the report's rate_span_s; null on the first report or when the counter was reset"
    )


class Latency(BaseModel):
    count: float
    mean: float | None = Field(description="seconds")
    p50: float | None = Field(description="seconds, interpolated in the histogram's buckets as PromQL does")
    p95: float | None
    p99: float | None


class FlopsReport(BaseModel):
    mean: float | None = Field(description="executed FLOPs per image, policy included")
    network: int = Field(description="FLOPs of the variant's own full network, per image")
    saved: float | None = Field(description="1 - executed / the variant's own full network's (skipped blocks)")
    fraction_of_baseline: float | None = Field(description="mean / the baseline variant's full network's")
    saved_vs_baseline: float | None = Field(description="1 - fraction_of_baseline")


class SkippedBucket(BaseModel):
    le: float = Field(description="upper bound (inclusive) of the bucket; the one before is its exclusive lower")
    count: float = Field(description="images in this bucket (not cumulative)")


class Skipped(BaseModel):
    mean: float | None
    count: float
    buckets: list[SkippedBucket]


class Executions(BaseModel):
    counts: list[float] = Field(description="images that ran each block, in mask order")
    rates: list[float | None] = Field(description="counts / images")


class Shadow(BaseModel):
    shadow: str
    agree: float
    disagree: float
    skipped: float
    agreement: float | None
    interval: Interval | None = Field(description="95 % Wilson interval of the agreement")


class Comparison(BaseModel):
    """Valid for one look at a sample size fixed in advance only: watched continuously, it finds differences that
    are not there (``blockdrop bench ab-simulation``); ``always_valid`` is the comparison to act on."""

    baseline: str
    difference: float = Field(description="accuracy minus the baseline's")
    z: float
    p_value: float = Field(description="FIXED-HORIZON: two-sided, pooled two-proportion z-test, one look only")
    significant: bool = Field(description="p_value < alpha, at a fixed horizon")


class Bounds(BaseModel):
    estimate: float | None
    low: float | None = Field(description="always-valid lower end; null: unbounded so far")
    high: float | None = Field(description="always-valid upper end; null: unbounded so far")


class AccuracyBounds(Bounds):
    decision: Literal["collecting", "non-inferior", "better", "worse"] = Field(
        description="better: low > 0; non-inferior: low > -margin; worse: high < -margin (worse by more than the "
        "margin); collecting: none yet, or under 10 feedbacks on either"
    )


class AlwaysValid(BaseModel):
    """Confidence sequences at the report's confidence: valid however often they are looked at."""

    baseline: str
    accuracy: AccuracyBounds = Field(description="accuracy minus the baseline's")
    latency_p99_ratio: Bounds | None = Field(description="p99 latency / the baseline's (each p99 at alpha / 2)")
    flops_fraction_of_baseline: Bounds | None = Field(description="mean FLOPs / the baseline's full network")


class Feedback(BaseModel):
    right: float
    wrong: float
    n: float
    accuracy: float | None
    interval: Interval | None = Field(description="95 % Wilson interval of the accuracy")
    fixed_horizon: Comparison | None = Field(
        description="fixed-horizon z-test; null for the baseline itself or without feedback on either"
    )


class VariantReport(BaseModel):
    name: str
    model: str | None
    mode: str | None
    blocks: int
    stages: list[int] = Field(description="residual blocks per stage, in mask order")
    traffic: Traffic
    requests: Requests
    latency_s: Latency
    images: float
    flops: FlopsReport
    skipped_blocks: Skipped
    block_executions: Executions
    shadow: list[Shadow] = Field(description="runs of a shadow variant on this variant's requests")
    feedback: Feedback
    always_valid: AlwaysValid | None = Field(description="null for the baseline itself or without a baseline")


class RequestTotals(BaseModel):
    routed: float
    unrouted: float = Field(description="requests that failed before a variant was chosen")
    per_second: float | None


class ExperimentReport(BaseModel):
    baseline: str | None = Field(description="the variant compared against; null if the requested one is absent")
    requested_baseline: str
    note: str | None
    confidence: float
    alpha: float
    margin: float = Field(description="non-inferiority margin of the always-valid accuracy decisions")
    rate_span_s: float | None = Field(description="seconds the requests/s figures are measured over")
    requests: RequestTotals
    variants: list[VariantReport]


class Explanation(BaseModel):
    variant: str
    model: str
    blocks: int
    stages: list[int] = Field(description="residual blocks per stage, in mask order")
    keep_probabilities: list[float] | None = Field(
        description="the policy's keep-probability of each block; null for a variant that runs every block"
    )
    mask: str | None = Field(description="the blocks the threshold keeps, 1 = executed; null without a policy")
    compute: Compute
