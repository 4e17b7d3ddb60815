"""Open Inference Protocol v2 (KServe / Triton), JSON form: thin routes over the data plane.

Input: one tensor, FP32 ``[N, 3, H, W]`` already normalised as the model's manifest says, or UINT8 ``[N, H, W, 3]``
raw pixels (normalised by the service). Outputs: ``logits`` FP32 ``[N, C]``, ``keep_mask`` BOOL ``[N, K]`` and
``flops`` INT64 ``[N]``. The body is parsed as JSON whatever its Content-Type (tritonclient sends none); the binary
tensor extension is refused with a 400 that says so.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service import __version__
from service.api.deps import get_plane
from service.api.schemas import ERROR_RESPONSES
from service.api.v2_schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ResponseOutput,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    inline_schema,
)
from service.dataplane import DataPlane
from service.errors import BadInput
from service.tensors import InputTensor

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

MODEL_VERSION = "1"
BINARY_REFUSAL = "the binary tensor extension is not supported; send JSON tensors (binary_data=False)"


@router.get("", summary="Server metadata")
async def server_metadata() -> ServerMetadataResponse:
    return ServerMetadataResponse(name="blockdrop-serving", version=__version__, extensions=[])


@router.get("/health/live", summary="Server liveness")
async def server_live() -> ServerLiveResponse:
    return ServerLiveResponse(live=True)


@router.get(
    "/health/ready", summary="Server readiness (503 until every model is ready)", response_model=ServerReadyResponse
)
async def server_ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


@router.get("/models/{name}", summary="Model metadata", responses=ERROR_RESPONSES)
async def model_metadata(name: str, plane: DataPlane = Depends(get_plane)) -> ModelMetadataResponse:
    return ModelMetadataResponse(versions=[MODEL_VERSION], platform="pytorch", **plane.model_metadata(name))


@router.get(
    "/models/{name}/ready", summary="Model readiness", responses=ERROR_RESPONSES, response_model=ModelReadyResponse
)
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
            "content": {"application/json": {"schema": inline_schema(InferenceRequest)}},
        }
    },
)
async def infer(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> InferenceResponse:
    if "inference-header-content-length" in request.headers:
        raise BadInput(BINARY_REFUSAL)
    plane.variant(name)  # an unknown model is a 404 whatever the body holds
    request.state.variant = name
    body = parse_request(await request.body())
    inputs = [InputTensor(t.name, t.datatype, t.shape, t.data) for t in body.inputs]
    wanted = [o.name for o in body.outputs] if body.outputs else None
    outputs = await plane.infer_tensors(name, inputs, wanted)
    return InferenceResponse(
        model_name=name,
        model_version=MODEL_VERSION,
        id=body.id,
        outputs=[ResponseOutput(name=o.name, datatype=o.datatype, shape=o.shape, data=o.as_list()) for o in outputs],
    )


def parse_request(raw: bytes) -> InferenceRequest:
    """The request body as its wire model, or a 400 naming the first field that is wrong."""
    try:
        body = InferenceRequest.model_validate_json(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
        if problem["type"] == "json_invalid":
            raise BadInput(f"the body is not valid JSON: {problem['msg']}") from None
        raise BadInput(f"invalid inference request: {where or 'body'}: {problem['msg']}") from None
    if any((t.parameters or {}).get("binary_data_size") is not None for t in body.inputs):
        raise BadInput(BINARY_REFUSAL)
    return body
