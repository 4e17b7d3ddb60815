"""The methods of ``inference.GRPCInferenceService`` as gRPC handlers that answer, rather than raise, what grpcio's
generated registration (``add_GRPCInferenceServiceServicer_to_server``) leaves to an exception:

- a request that is not a valid protobuf message gets INVALID_ARGUMENT naming the message it should have been
  (the generated deserializer raised ``DecodeError``: UNKNOWN, and an error logged with its traceback each time);
- a method of Triton's service that is not served here (repository, shared memory, statistics, tracing, streaming
  inference) gets UNIMPLEMENTED naming the methods that are (the generated base class raised
  ``NotImplementedError``: an error logged with its traceback at every call, a client's probe included).

The served methods are the servicer's own coroutines named as the service's methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Malformed:
    """What the deserializer gives for bytes that do not parse (grpcio would log an exception raised there)."""

    reason: str


def _tolerant_parser(message_class: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return _Malformed(str(error))

    return parse


def _served(behaviour: Behaviour, message_name: str, metadata: Metadata) -> Behaviour:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            context.set_trailing_metadata(metadata)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {message_name} protobuf message ({request.reason})",
            )
        return await behaviour(request, context)

    return handle


def _unimplemented(message: str, metadata: Metadata) -> Behaviour:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_trailing_metadata(metadata)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return refuse


def method_handlers(servicer: object, metadata: Metadata = ()) -> dict[str, grpc.RpcMethodHandler]:
    """Every method of the service, by name: the servicer's own where it has one, UNIMPLEMENTED otherwise; the
    refusals made here carry ``metadata`` (trailing), as the servicer's own answers carry theirs."""
    served = [m.name for m in SERVICE.methods if callable(getattr(servicer, m.name, None))]
    not_served = f"this service answers only the Open Inference Protocol v2 methods of {SERVICE.full_name}: "
    not_served += ", ".join(served)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        if method.name not in served:  # the request is not even parsed
            refuse = _unimplemented(f"{method.name} is not served; {not_served}", metadata)
            streaming = method.client_streaming or method.server_streaming
            make = grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
            handlers[method.name] = make(refuse)
        elif method.client_streaming or method.server_streaming:
            raise ValueError(f"{method.name} streams: serve it with a streaming handler, not this table")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _served(getattr(servicer, method.name), method.input_type.name, metadata),
                request_deserializer=_tolerant_parser(getattr(pb, method.input_type.name)),
                response_serializer=getattr(pb, method.output_type.name).SerializeToString,
            )
    return handlers


def add_inference_service(servicer: object, server: grpc.aio.Server, metadata: Metadata = ()) -> None:
    """Register ``servicer`` as ``inference.GRPCInferenceService`` on ``server`` (as the generated function does,
    through grpcio's registered-method table); ``metadata``: what every refusal made here carries."""
    handlers = method_handlers(servicer, metadata)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
