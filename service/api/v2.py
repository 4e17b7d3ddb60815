"""Open Inference Protocol v2 (KServe / Triton), JSON form: thin routes over the data plane.

Input: one tensor, FP32 ``[N, 3, H, W]`` already normalised as the model's manifest says, or UINT8 ``[N, H, W, 3]``
raw pixels (normalised by the service), as JSON data or as binary data after the JSON header (the binary tensor
data extension, ``service/api/v2_binary.py``). Outputs: ``logits`` FP32 ``[N, C]``, ``keep_mask`` BOOL ``[N, K]``
and ``flops`` INT64 ``[N]``, as JSON or binary as the request asks. The body is parsed as JSON whatever its
Content-Type (tritonclient sends none).
"""

from __future__ import annotations

from functools import partial

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service import __version__
from service.accounting import account_in
from service.api import v2_binary as binary_extension
from service.api.choice import choose_variant, refuse_repeated
from service.api.deps import get_plane
from service.api.schemas import ERROR_RESPONSES
from service.api.v2_binary import binary_outputs, encode, input_tensors, split_body
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
from service.dataplane import MODEL_VERSION, DataPlane
from service.errors import BadInput
from service.tensors import refuse_oversized_json

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

# JSON bodies larger than this are parsed in a worker thread, so that the event loop keeps answering meanwhile
INLINE_JSON_BYTES = 64 * 1024


@router.get("", summary="Server metadata")
async def server_metadata() -> ServerMetadataResponse:
    return ServerMetadataResponse(
        name="blockdrop-serving", version=__version__, extensions=[binary_extension.EXTENSION]
    )


@router.get(
    "/health/live",
    summary="Server liveness (503 where the service should be restarted)",
    response_model=ServerLiveResponse,
)
async def server_live(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    live = plane.not_live() is None
    return JSONResponse(ServerLiveResponse(live=live).model_dump(), status_code=200 if live else 503)


@router.get(
    "/health/ready", summary="Server readiness (503 until every model is ready)", response_model=ServerReadyResponse
)
async def server_ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


# The protocol's /versions/{version} form of the model routes: the same answers for the one version each model is
# served as, 404 for any other (not in the OpenAPI document, which would have each route twice)
VERSIONED = {"responses": ERROR_RESPONSES, "include_in_schema": False}


def _version(request: Request) -> str:
    return request.path_params.get("version", "")


@router.get("/models/{name}", summary="Model metadata", responses=ERROR_RESPONSES)
@router.get("/models/{name}/versions/{version}", **VERSIONED)
async def model_metadata(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> ModelMetadataResponse:
    plane.knows(name, _version(request))
    return ModelMetadataResponse(versions=[MODEL_VERSION], platform="pytorch", **plane.model_metadata(name))


@router.get(
    "/models/{name}/ready", summary="Model readiness", responses=ERROR_RESPONSES, response_model=ModelReadyResponse
)
@router.get("/models/{name}/versions/{version}/ready", **VERSIONED)
async def model_ready(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    plane.knows(name, _version(request))
    ready = plane.model_ready(name)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


@router.post(
    "/models/{name}/infer",
    summary="Run inference on a tensor (JSON, or the binary tensor data extension)",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(InferenceRequest)}},
        }
    },
)
@router.post("/models/{name}/versions/{version}/infer", **VERSIONED)
async def infer(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> Response:
    plane.knows(name, _version(request))  # an unknown model or version is a 404 whatever the body holds
    refuse_repeated(request, names=())
    json_part, binary = split_body(await request.body(), request.headers.get(binary_extension.HEADER))
    refuse_oversized_json(json_part, plane.max_tensor_values)
    body = (
        await to_thread.run_sync(parse_request, json_part)
        if len(json_part) > INLINE_JSON_BYTES
        else parse_request(json_part)
    )
    inputs = input_tensors(body, binary)
    asked = partial(_text, body.parameters or {})
    variant, budget = choose_variant(plane, account_in(request.scope), asked, request.headers.get, model=name)
    compute = plane.compute_for(variant, budget)
    wanted = [o.name for o in body.outputs] if body.outputs else None
    outputs = await plane.infer_tensors(variant, inputs, wanted, compute)
    as_binary = binary_outputs(body, [o.name for o in outputs])
    header = InferenceResponse(
        model_name=name,
        model_version=MODEL_VERSION,
        id=body.id,
        parameters={"variant": variant.name, **compute.as_dict()},
        outputs=[
            ResponseOutput(
                name=o.name, datatype=o.datatype, shape=o.shape, data=None if o.name in as_binary else o.as_list()
            )
            for o in outputs
        ],
    ).model_dump(exclude_none=True)
    if not as_binary:
        return JSONResponse(header)
    content, header_length = encode(header, outputs, as_binary)
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def _text(parameters: dict, key: str) -> str | None:
    value = parameters.get(key)
    if value is None or isinstance(value, str):
        return value
    if key == "budget" and isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)  # a budget may come as a number (as gRPC's double_param)
    kind = "a string or a number" if key == "budget" else "a string"
    raise BadInput(f"parameters.{key} must be {kind}, got {value!r}")


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
    return body
