"""Open Inference Protocol v2 (KServe / Triton), JSON form.

Input: one tensor, FP32 ``[N, 3, H, W]`` already normalised as the model's manifest says, or UINT8 ``[N, H, W, 3]``
raw pixels (normalised here). Outputs: ``logits`` FP32 ``[N, C]``, ``keep_mask`` BOOL ``[N, K]`` and ``flops``
INT64 ``[N]``. The body is parsed as JSON whatever its Content-Type (tritonclient sends none); the binary
tensor extension is refused with a 400 that says so.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.api.deps import get_plane
from service.api.schemas import ERROR_RESPONSES
from service.dataplane import DataPlane
from service.errors import BadInput, PayloadTooLarge
from service.imaging import normalize
from service.variants import Variant

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

MODEL_VERSION = "1"
OUTPUTS = ("logits", "keep_mask", "flops")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": "blockdrop-serving", "version": "0.1.0", "extensions": []}


@router.get("/health/live", summary="Server liveness")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (503 until every model is ready)")
async def server_ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


@router.get("/models/{name}", summary="Model metadata", responses=ERROR_RESPONSES)
async def model_metadata(name: str, plane: DataPlane = Depends(get_plane)) -> dict:
    variant = plane.variant(name)
    spec = variant.manifest.input
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": "pytorch",
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [-1, 3, spec.height, spec.width]},
            {"name": "images", "datatype": "UINT8", "shape": [-1, spec.height, spec.width, 3]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, len(variant.manifest.classes)]},
            {"name": "keep_mask", "datatype": "BOOL", "shape": [-1, variant.num_blocks]},
            {"name": "flops", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}/ready", summary="Model readiness", responses=ERROR_RESPONSES)
async def model_ready(name: str, plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    plane.variant(name)
    return JSONResponse({"name": name, "ready": plane.ready}, status_code=200 if plane.ready else 503)


@router.post(
    "/models/{name}/infer",
    summary="Run inference on a tensor",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "inputs": {"type": "array", "items": {"type": "object"}},
                            "outputs": {"type": "array", "items": {"type": "object"}},
                        },
                    }
                }
            },
        }
    },
)
async def infer(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> dict:
    if "inference-header-content-length" in request.headers:
        raise BadInput("the binary tensor extension is not supported; send JSON tensors (binary_data=False)")
    variant = plane.variant(name)
    request.state.variant = name
    body = _parse_body(await request.body())
    batch = _input_tensor(body, variant, plane.settings.max_images_per_request)
    wanted = _requested_outputs(body)
    results = await plane.infer_tensor(variant, batch)
    n = len(results)
    tensors = {
        "logits": ("FP32", [n, len(variant.manifest.classes)], torch.stack([r.logits for r in results])),
        "keep_mask": ("BOOL", [n, variant.num_blocks], torch.stack([r.keep_mask for r in results])),
        "flops": ("INT64", [n], torch.tensor([r.flops for r in results])),
    }
    response: dict[str, Any] = {
        "model_name": name,
        "model_version": MODEL_VERSION,
        "outputs": [
            {
                "name": key,
                "datatype": tensors[key][0],
                "shape": tensors[key][1],
                "data": tensors[key][2].flatten().tolist(),
            }
            for key in wanted
        ],
    }
    if "id" in body:
        response["id"] = body["id"]
    return response


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInput(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
        raise BadInput("the body must be a JSON object with 'inputs': a list of exactly one tensor")
    return body


def _input_tensor(body: dict[str, Any], variant: Variant, max_images: int) -> torch.Tensor:
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadInput("inputs[0] must be an object with name, shape, datatype and data")
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if tensor.get("parameters", {}).get("binary_data_size") is not None:
        raise BadInput("the binary tensor extension is not supported; send JSON tensors (binary_data=False)")
    spec = variant.manifest.input
    expected = {"FP32": [3, spec.height, spec.width], "UINT8": [spec.height, spec.width, 3]}
    if datatype not in expected:
        raise BadInput(
            f"inputs[0].datatype must be FP32 (normalised [N,3,H,W]) or UINT8 (pixels [N,H,W,3]), not {datatype!r}"
        )
    if not (
        isinstance(shape, list)
        and len(shape) == 4
        and shape[1:] == expected[datatype]
        and isinstance(shape[0], int)
        and shape[0] >= 1
    ):
        raise BadInput(
            f"inputs[0].shape must be [N, {', '.join(map(str, expected[datatype]))}] for {datatype}, got {shape!r}"
        )
    if shape[0] > max_images:
        raise PayloadTooLarge(f"{shape[0]} images in one request; the limit is {max_images}")
    try:
        values = torch.tensor(data, dtype=torch.float32 if datatype == "FP32" else torch.int64)
    except (TypeError, ValueError, RuntimeError):
        raise BadInput("inputs[0].data must be a (flat or nested) list of numbers") from None
    if values.numel() != shape[0] * expected[datatype][0] * expected[datatype][1] * expected[datatype][2]:
        raise BadInput(
            f"inputs[0].data has {values.numel()} values; shape {shape} needs "
            f"{shape[0] * expected[datatype][0] * expected[datatype][1] * expected[datatype][2]}"
        )
    values = values.reshape(shape)
    if datatype == "FP32":
        if not torch.isfinite(values).all():
            raise BadInput("inputs[0].data holds NaN or infinite values")
        return values
    if values.min() < 0 or values.max() > 255:
        raise BadInput("UINT8 pixel values must be between 0 and 255")
    return normalize(values.to(torch.uint8).permute(0, 3, 1, 2), spec)


def _requested_outputs(body: dict[str, Any]) -> list[str]:
    requested = body.get("outputs")
    if not requested:
        return list(OUTPUTS)
    names = [o.get("name") if isinstance(o, dict) else None for o in requested]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise BadInput(f"unknown output(s) {unknown}; this model has {', '.join(OUTPUTS)}")
    return names
