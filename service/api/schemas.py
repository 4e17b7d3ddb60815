"""Response and request bodies, for validation and for the OpenAPI document at ``/docs``."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictInt, StrictStr


class Prediction(BaseModel):
    class_id: int
    label: str
    confidence: float = Field(description="softmax probability")


class Blocks(BaseModel):
    used: int
    total: int
    skipped: int
    mask: str = Field(description="one character per residual block, 1 = executed", examples=["111011101110111"])


class Flops(BaseModel):
    executed: int = Field(description="FLOPs spent on this image, the policy included (1 multiply-add = 2 FLOPs)")
    full: int = Field(description="FLOPs of the variant's full network")
    ratio: float


class LatencyMs(BaseModel):
    total: float
    queue: float
    inference: float = Field(description="model time of the batch this image ran in")


class Compute(BaseModel):
    threshold: float | None = Field(description="the policy threshold this image ran at; null for a plain network")
    budget: float | None = Field(
        default=None, description="the compute budget asked for (X-Compute-Budget / ?budget=), as a FLOPs fraction"
    )
    note: str | None = Field(default=None, description="e.g. that a plain network ignored the budget")


class Classification(BaseModel):
    request_id: str = Field(description="quote it in POST /v1/feedback")
    variant: str
    model: str
    prediction: Prediction
    top_k: list[Prediction]
    blocks: Blocks
    flops: Flops
    compute: Compute
    latency_ms: LatencyMs


class BatchClassification(BaseModel):
    variant: str
    results: list[Classification]


class BatchRequest(BaseModel):
    images: list[str] = Field(min_length=1, description="base64-encoded image files (PNG, JPEG, WebP, ...)")
    top_k: int | None = Field(default=None, ge=1)


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    # strict: JSON true is not class 1, nor 1.0 class 1
    label: StrictInt | StrictStr = Field(description="the true class, as a class id or a class name")


class FeedbackResponse(BaseModel):
    request_id: str
    variant: str
    predicted: int
    label: int
    correct: bool


class ErrorBody(BaseModel):
    error: str


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "the image is corrupt or the request malformed",
        408: "the request's headers or body did not arrive in time (header_timeout_s, body_timeout_s)",
        404: "unknown variant, model or request id",
        413: "body, image or batch too large",
        415: "not a supported image type",
        422: "invalid parameters",
        431: "the request's headers are too large (max_header_bytes)",
        503: "overloaded or shutting down; see Retry-After",
        504: "no answer before the request deadline",
    }.items()
}
