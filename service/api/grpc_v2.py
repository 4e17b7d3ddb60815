"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), in the service's own process and
event loop: the same data plane, router, batchers, limits, metrics and shutdown as the HTTP routes.

The stubs are the ones generated from Triton's ``grpc_service.proto`` (a superset of KServe's
``grpc_predict_v2.proto``) that ship in ``tritonclient[grpc]``; only the v2 methods are served, the others answer
UNIMPLEMENTED, and a message that does not parse INVALID_ARGUMENT (``grpc_handlers.py``). Domain errors map once each
to a gRPC status.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import grpc
from tritonclient.grpc import service_pb2 as pb

from service import __version__
from service.accounting import SERVED_BY_HEADER, RequestAccount, served_by
from service.api.choice import choose_variant, refuse_repeated_metadata
from service.api.grpc_bounds import grpc_bounds
from service.api.grpc_handlers import add_inference_service
from service.api.v2_binary import EXTENSION
from service.config import Settings
from service.dataplane import MODEL_VERSION, Compute, DataPlane
from service.errors import DeadlineExceeded, NotFound, Overloaded, PayloadTooLarge, ServiceError
from service.metrics import ServiceMetrics
from service.request_log import REQUEST_ID_HEADER
from service.tensors import InputTensor, OutputTensor

log = logging.getLogger(__name__)

# typed contents field of each input datatype the models take
CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


def status_of(error: ServiceError, draining: bool) -> grpc.StatusCode:
    """The gRPC status for a domain error: what each HTTP status of the same error means."""
    if isinstance(error, Overloaded):
        return grpc.StatusCode.UNAVAILABLE if draining else grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, PayloadTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if error.status_code == 503:
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= error.status_code < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def input_tensors(request: pb.ModelInferRequest, max_values: int) -> list[InputTensor]:
    """The request's inputs, from ``raw_input_contents`` (one entry per input, in order) or typed ``contents``; typed
    contents with more than ``max_values`` values are refused before they become a Python list."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ServiceError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input", 400
        )
    tensors = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data: object = raw[i]
        elif tensor.datatype in CONTENTS:
            contents = getattr(tensor.contents, CONTENTS[tensor.datatype])
            if len(contents) > max_values:
                raise PayloadTooLarge(
                    f"inputs[{i}] holds {len(contents)} values; a request carries at most {max_values} tensor values"
                )
            data = list(contents)
        else:
            data = []  # the data plane refuses the datatype with its own message
        tensors.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return tensors


def _parameter(request: pb.ModelInferRequest, key: str) -> str | None:
    if key not in request.parameters:
        return None
    parameter = request.parameters[key]
    kind = parameter.WhichOneof("parameter_choice")
    if key == "budget" and kind in ("double_param", "int64_param", "uint64_param"):  # a number (1: tritonclient's int)
        return repr(getattr(parameter, kind))
    if kind != "string_param":
        raise ServiceError(f"parameters.{key} must be {'a string or a number' if key == 'budget' else 'a string'}", 400)
    return parameter.string_param


def response_for(
    request: pb.ModelInferRequest, variant: str, outputs: list[OutputTensor], compute: Compute
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=MODEL_VERSION, id=request.id)
    response.parameters["variant"].string_param = variant
    for key, value in compute.as_dict().items():
        if isinstance(value, str):
            response.parameters[key].string_param = value
        elif value is not None:
            response.parameters[key].double_param = value
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.as_bytes())
    return response


class InferenceServicer:
    """Every answer names the process in metadata ``x-served-by``: ModelInfer's initial metadata (beside
    ``x-request-id``), the other methods' trailing metadata."""

    def __init__(self, plane: DataPlane, metrics: ServiceMetrics):
        self.plane = plane
        self.metrics = metrics
        self.served_by = (SERVED_BY_HEADER, served_by())  # when the server starts, in the process that serves

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        context.set_trailing_metadata((self.served_by,))
        return pb.ServerLiveResponse(live=self.plane.not_live() is None)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        context.set_trailing_metadata((self.served_by,))
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        context.set_trailing_metadata((self.served_by,))
        await self._known(request.name, context, request.version)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        context.set_trailing_metadata((self.served_by,))
        return pb.ServerMetadataResponse(name="blockdrop-serving", version=__version__, extensions=[EXTENSION])

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        context.set_trailing_metadata((self.served_by,))
        await self._known(request.name, context, request.version)
        metadata = self.plane.model_metadata(request.name)
        response = pb.ModelMetadataResponse(name=request.name, versions=[MODEL_VERSION], platform="pytorch")
        for entry in metadata["inputs"]:
            response.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        for entry in metadata["outputs"]:
            response.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        return response

    async def ModelInfer(self, request, context) -> pb.ModelInferResponse:
        pairs = list(context.invocation_metadata() or ())
        metadata = dict(pairs)
        # counted as the HTTP routes count, by the HTTP status the same answer would have had
        account = RequestAccount.open(self.metrics, metadata.get(REQUEST_ID_HEADER), "grpc", "ModelInfer")
        await context.send_initial_metadata([(REQUEST_ID_HEADER, account.request_id), self.served_by])
        try:
            self.plane.knows(request.model_name, request.model_version)
            refuse_repeated_metadata(pairs)
            asked = partial(_parameter, request)
            chosen, budget = choose_variant(self.plane, account, asked, metadata.get, model=request.model_name)
            compute = self.plane.compute_for(chosen, budget)
            wanted = [o.name for o in request.outputs] or None
            outputs = await self.plane.infer_tensors(
                chosen, input_tensors(request, self.plane.max_tensor_values), wanted, compute
            )
            account.status = 200
            return response_for(request, chosen.name, outputs, compute)
        except ServiceError as error:
            account.status = error.status_code
            await context.abort(status_of(error, self.plane.draining), error.message)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed: nobody reads an answer
            account.status = 400  # as HTTP counts a client that went away (service/api/errors.py), not a 500
            raise
        except Exception:
            log.exception("unhandled error in gRPC ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the service logged the details")
        finally:
            account.finish()

    async def _known(self, name: str, context, version: str = "") -> None:
        try:
            self.plane.knows(name, version)
        except NotFound as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, error.message)


async def start_grpc(
    plane: DataPlane, metrics: ServiceMetrics, settings: Settings, share_port: bool = False
) -> grpc.aio.Server:
    """Serve gRPC on the settings' host and gRPC port in the running event loop, within the bounds of
    ``grpc_bounds``; the caller stops it. ``share_port``: several API server processes of this service listen on the
    port together (SO_REUSEPORT); otherwise the port is this process's alone, and a port another program holds is an
    error (gRPC would share it by default)."""
    bounds = grpc_bounds(settings, plane.max_tensor_values)
    options = [*bounds.options, ("grpc.so_reuseport", 1 if share_port else 0)]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=bounds.max_concurrent_rpcs)
    servicer = InferenceServicer(plane, metrics)
    add_inference_service(servicer, server, (servicer.served_by,))  # its refusals too name the process
    if server.add_insecure_port(f"{settings.host}:{settings.grpc_port}") == 0:
        raise OSError(f"could not listen for gRPC on {settings.host}:{settings.grpc_port}")
    await server.start()
    log.info(
        "gRPC on %s:%d (messages up to %d bytes, %d RPCs at once)",
        settings.host,
        settings.grpc_port,
        bounds.max_message_bytes,
        bounds.max_concurrent_rpcs,
    )
    return server
