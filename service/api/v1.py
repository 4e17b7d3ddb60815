"""``/v1``: classify (raw image body, multipart field ``file``, or a JSON batch of base64 images), feedback, models."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from service.accounting import account_in
from service.api.choice import choose_variant, refuse_repeated
from service.api.deps import get_plane
from service.api.schemas import (
    ERROR_RESPONSES,
    BatchClassification,
    BatchRequest,
    Classification,
    FeedbackRequest,
    FeedbackResponse,
)
from service.dataplane import DataPlane
from service.errors import BadInput, PayloadTooLarge, Unprocessable, UnsupportedMediaType

router = APIRouter(prefix="/v1", tags=["v1"])

_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "additionalProperties": False,
                }
            },
            "application/json": {"schema": BatchRequest.model_json_schema()},
        },
    }
}


@router.post(
    "/classify",
    summary="Classify an image (or a JSON batch of images)",
    response_model=None,
    responses={200: {"model": Classification | BatchClassification}, **ERROR_RESPONSES},
    openapi_extra=_CLASSIFY_BODY,
)
async def classify(
    request: Request,
    variant: str | None = Query(default=None, description="force a variant (wins over X-Variant)"),
    top_k: int | None = Query(default=None, ge=1, description="how many ranked classes to return (default 1)"),
    budget: str | None = Query(
        default=None, description="compute budget: a fraction of the full network's FLOPs in (0, 1], or a level name"
    ),
    x_variant: str | None = Header(default=None, description="force a variant"),
    x_client_id: str | None = Header(default=None, description="sticky A/B key: same key, same variant"),
    x_compute_budget: str | None = Header(default=None, description="compute budget (the query's budget wins)"),
    plane: DataPlane = Depends(get_plane),
) -> JSONResponse:
    refuse_repeated(request)
    images, batch_top_k, is_batch = await _read_images(request, plane.settings.max_images_per_request)
    headers = {"x-variant": x_variant, "x-client-id": x_client_id, "x-compute-budget": x_compute_budget}
    asked = {"variant": variant, "budget": budget}
    chosen, asked_budget = choose_variant(plane, account_in(request.scope), asked.get, headers.get)
    results = await plane.classify(chosen, images, top_k or batch_top_k or 1, asked_budget, named=is_batch)
    # a ready response: FastAPI would otherwise walk the plain dicts once more through jsonable_encoder
    return JSONResponse({"variant": chosen.name, "results": results} if is_batch else results[0])


async def _read_images(request: Request, max_images: int) -> tuple[list[bytes], int | None, bool]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4)
        except HTTPException as error:  # Starlette's multipart parser: "Missing boundary in multipart.", …
            raise BadInput(f"the multipart body cannot be read: {error.detail}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Unprocessable("the multipart body needs the image in a file field named 'file'")
        return [await upload.read()], None, False
    if content_type == "application/json":
        return (*_decode_batch(await request.body(), max_images), True)
    if content_type.startswith("image/") or content_type in ("", "application/octet-stream"):
        return [await request.body()], None, False
    raise UnsupportedMediaType(
        f"content type {content_type!r} is not accepted: send the image bytes as image/png, image/jpeg, image/webp "
        "..., a multipart field 'file', or JSON {\"images\": [base64, ...]}"
    )


def _decode_batch(body: bytes, max_images: int) -> tuple[list[bytes], int | None]:
    # pydantic's JSON parser bounds nesting (json.loads would recurse until RecursionError on [[[[...)
    try:
        batch = BatchRequest.model_validate_json(body)
    except ValidationError as error:
        problems = error.errors()
        if problems[0]["type"] == "json_invalid":
            raise Unprocessable(f"the body is not valid JSON: {problems[0]['msg']}") from None
        raise Unprocessable(
            "invalid batch: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems)
        ) from None
    if len(batch.images) > max_images:
        raise PayloadTooLarge(f"{len(batch.images)} images in one request; the limit is {max_images}")
    images = []
    for i, encoded in enumerate(batch.images):
        try:
            images.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise Unprocessable(f"images[{i}] is not valid base64") from None
    return images, batch.top_k


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses=ERROR_RESPONSES,
    summary="Report the true label of a served prediction",
)
async def feedback(body: FeedbackRequest, plane: DataPlane = Depends(get_plane)) -> dict:
    return await plane.feedback(body.request_id, body.label)


@router.get("/models", summary="The variants served, with their manifests' figures")
async def models(plane: DataPlane = Depends(get_plane)) -> dict:
    return {
        "models": plane.models(),
        "shadow": {"variant": plane.settings.shadow_variant, "fraction": plane.settings.shadow_fraction},
    }
