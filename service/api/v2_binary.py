"""The binary tensor data extension of the v2 REST protocol (Triton's ``binary_tensor_data``): a body that is a
JSON header of ``Inference-Header-Content-Length`` bytes followed by the inputs' raw bytes, in input order, each
``parameters.binary_data_size`` long; and outputs sent the same way when the request asks for them.

Every length is checked against the body before a byte of it is used; a mismatch is a 400 that names the input.
"""

from __future__ import annotations

from typing import Any

from service.api.v2_schemas import InferenceRequest, RequestOutput
from service.errors import BadInput
from service.numbers import whole_number
from service.tensors import InputTensor, OutputTensor

HEADER = "inference-header-content-length"
EXTENSION = "binary_tensor_data"


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary part of a request body (all of it is JSON without the header)."""
    if header_length is None:
        return raw, b""
    length = whole_number(header_length)
    if length is None:
        shown = header_length if len(header_length) <= 40 else f"{header_length[:20]}... ({len(header_length)} chars)"
        raise BadInput(f"Inference-Header-Content-Length must be a whole number of bytes, got {shown!r}")
    if length > len(raw):
        raise BadInput(f"Inference-Header-Content-Length says {length} bytes of JSON, but the body has {len(raw)}")
    return raw[:length], raw[length:]


def input_tensors(request: InferenceRequest, binary: bytes) -> list[InputTensor]:
    """The request's inputs, each with its JSON data or its slice of the binary part."""
    tensors, offset = [], 0
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise BadInput(f"{where} has neither data nor parameters.binary_data_size")
            tensors.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, tensor.data))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"{where}: parameters.binary_data_size must be a whole number of bytes, got {size!r}")
        if tensor.data is not None:
            raise BadInput(f"{where} has both data and parameters.binary_data_size; send one")
        if offset + size > len(binary):
            raise BadInput(
                f"{where}: parameters.binary_data_size is {size} bytes, but only {len(binary) - offset} bytes of "
                "binary data are left in the body"
            )
        tensors.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise BadInput(
            f"the body has {len(binary)} bytes after the JSON header, but the inputs' binary_data_size add up to "
            f"{offset}"
        )
    return tensors


def binary_outputs(request: InferenceRequest, names: list[str]) -> set[str]:
    """The outputs to send as binary: each output's own ``binary_data`` wins over the request's
    ``binary_data_output``; without either, JSON."""
    default = _flag((request.parameters or {}).get("binary_data_output"), "parameters.binary_data_output")
    asked: dict[str, RequestOutput] = {o.name: o for o in request.outputs or []}
    chosen = set()
    for name in names:
        own = (asked[name].parameters or {}).get("binary_data") if name in asked else None
        flag = _flag(own, f"outputs {name!r}: parameters.binary_data")
        if flag if flag is not None else default:
            chosen.add(name)
    return chosen


def _flag(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadInput(f"{where} must be true or false, got {value!r}")


def encode(header: dict[str, Any], outputs: list[OutputTensor], binary: set[str]) -> tuple[bytes, int]:
    """The response body, JSON header first and then the binary outputs' bytes, and the header's length."""
    from service.api.errors import encode_json

    chunks = []
    for entry, tensor in zip(header["outputs"], outputs):
        if tensor.name in binary:
            data = tensor.as_bytes()
            entry.pop("data", None)
            entry["parameters"] = {**(entry.get("parameters") or {}), "binary_data_size": len(data)}
            chunks.append(data)
    json_part = encode_json(header)
    return json_part + b"".join(chunks), len(json_part)
