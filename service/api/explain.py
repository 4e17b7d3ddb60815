"""``POST /v1/explain``: the policy's keep-probability of every block for one image, and the stage layout, so the
console can draw why a BlockDrop variant ran the blocks it ran. Not an inference request: it is not counted in
the metrics and takes no feedback."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request

from service.api.choice import refuse_repeated
from service.api.deps import get_plane
from service.api.experiment_schemas import Explanation
from service.api.schemas import ERROR_RESPONSES
from service.dataplane import DataPlane
from service.errors import UnsupportedMediaType

router = APIRouter(prefix="/v1", tags=["v1"])

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            kind: {"schema": {"type": "string", "format": "binary"}}
            for kind in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
        },
    }
}


@router.post(
    "/explain",
    response_model=Explanation,
    summary="The policy's keep-probability per block for an image (raw body); null for a variant without a policy",
    responses={status: ERROR_RESPONSES[status] for status in (400, 404, 413, 415, 422)},
    openapi_extra=_IMAGE_BODY,
)
async def explain(
    request: Request,
    variant: str = Query(description="the variant whose policy to run"),
    budget: str | None = Query(default=None, description="compute budget, as for /v1/classify (sets the threshold)"),
    x_compute_budget: str | None = Header(default=None, description="compute budget (the query's budget wins)"),
    plane: DataPlane = Depends(get_plane),
) -> dict:
    refuse_repeated(request, ("variant", "budget"), ("x-compute-budget",))
    chosen = plane.variant(variant)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type in ("", "application/octet-stream")):
        raise UnsupportedMediaType(f"content type {content_type!r} is not accepted: send the image bytes as the body")
    return await plane.explain(chosen, await request.body(), budget or x_compute_budget)
