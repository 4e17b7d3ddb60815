"""Tensors in and out of the data plane, whatever protocol carried them: every transport gets the same checks
and the same messages.

An input tensor is checked against the model's manifest before anything is built from it: its datatype, its
shape, the number of values and their range; the messages name the input so a client can see what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.artifacts import InputSpec
from service.batching import ImageResult
from service.errors import BadInput, PayloadTooLarge
from service.imaging import normalize

OUTPUTS = ("logits", "keep_mask", "flops")
# ``images`` is the normalised FP32 tensor (UINT8 is still taken under that name, as before ``pixels`` existed)
INPUT_NAMES = ("images", "pixels")


Buffer = bytes | bytearray | memoryview
# datatype -> (torch dtype it is read as, bytes per element in the binary form)
BINARY_TYPES = {"FP32": (torch.float32, 4), "UINT8": (torch.uint8, 1)}
OUTPUT_BYTES = {"FP32": torch.float32, "BOOL": torch.uint8, "INT64": torch.int64}


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: Any  # a flat or nested list of numbers, or the raw little-endian bytes (binary tensor extension)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: Tensor

    def as_list(self) -> list:
        return self.data.flatten().tolist()

    def as_bytes(self) -> bytes:
        """Row-major little-endian bytes, BOOL as one byte each (the binary tensor extension's layout)."""
        return self.data.contiguous().to(OUTPUT_BYTES[self.datatype]).numpy().tobytes()


# commas a v2 JSON body may hold besides those between tensor values (keys, outputs, parameters)
JSON_OTHER_SEPARATORS = 1024
# tensors with more values than this are built in a worker thread, not on the event loop
INLINE_TENSOR_VALUES = 16 * 3 * 32 * 32


def refuse_oversized_json(raw: bytes, max_values: int) -> None:
    """Refuse (413) a JSON body that holds far more numbers than any request may carry, before it is parsed: a
    count of commas is a C-speed scan, while parsing millions of numbers into objects would hold the event loop."""
    separators = raw.count(b",")
    if separators > max_values + JSON_OTHER_SEPARATORS:
        raise PayloadTooLarge(
            f"the JSON body holds about {separators + 1} values; a request carries at most {max_values} tensor values "
            "(max_images_per_request images of the model's input size); send fewer images per request"
        )


def value_count(tensor: InputTensor) -> int:
    """How many values ``tensor`` carries as sent (the outer length of nested JSON data, which is enough to choose
    where to build it)."""
    if isinstance(tensor.data, Buffer):
        return len(tensor.data)
    return len(tensor.data) if isinstance(tensor.data, list) else 0


def image_shapes(spec: InputSpec) -> dict[str, list[int]]:
    """Per datatype, the shape of one image: normalised FP32 [3, H, W] or raw UINT8 pixels [H, W, 3]."""
    return {"FP32": [3, spec.height, spec.width], "UINT8": [spec.height, spec.width, 3]}


def images_from(tensor: InputTensor, spec: InputSpec, max_images: int, where: str = "inputs[0]") -> Tensor:
    """A normalised float batch [N, 3, H, W] from one input tensor, or ``BadInput`` saying what is wrong."""
    expected = image_shapes(spec)
    datatype, shape = tensor.datatype, tensor.shape
    if tensor.name not in INPUT_NAMES:
        raise BadInput(
            f"{where}.name must be 'images' (FP32, or UINT8 as before) or 'pixels' (UINT8), not {tensor.name!r}"
        )
    if tensor.name == "pixels" and datatype != "UINT8":
        raise BadInput(f"{where}: the input 'pixels' is UINT8 [N, H, W, 3], not {datatype!r}")
    if datatype not in expected:
        raise BadInput(
            f"{where}.datatype must be FP32 (normalised [N,3,H,W]) or UINT8 (pixels [N,H,W,3]), not {datatype!r}"
        )
    per_image = expected[datatype]
    if not (len(shape) == 4 and shape[1:] == per_image and shape[0] >= 1):
        raise BadInput(f"{where}.shape must be [N, {', '.join(map(str, per_image))}] for {datatype}, got {shape!r}")
    if shape[0] > max_images:
        raise PayloadTooLarge(f"{shape[0]} images in one request; the limit is {max_images}")
    needed = shape[0] * per_image[0] * per_image[1] * per_image[2]
    if isinstance(tensor.data, Buffer):
        values = _from_bytes(tensor.data, datatype, shape, needed, where)
    else:
        if isinstance(tensor.data, list) and len(tensor.data) > needed:  # too many before a value is converted
            raise BadInput(f"{where}.data has {len(tensor.data)} values; shape {shape} needs {needed}")
        try:  # UINT8 read as float64 first: as int64, 1.5 would pass as 1
            values = torch.tensor(tensor.data, dtype=torch.float32 if datatype == "FP32" else torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise BadInput(f"{where}.data must be a (flat or nested) list of numbers") from None
        if values.numel() != needed:
            raise BadInput(f"{where}.data has {values.numel()} values; shape {shape} needs {needed}")
        if datatype == "UINT8" and not torch.equal(values, values.round()):  # NaN included: it equals nothing
            raise BadInput("UINT8 pixel values must be whole numbers between 0 and 255")
    values = values.reshape(shape)
    if datatype == "FP32":
        if not torch.isfinite(values).all():
            raise BadInput(f"{where}.data holds NaN or infinite values")
        return values
    if values.min() < 0 or values.max() > 255:
        raise BadInput("UINT8 pixel values must be between 0 and 255")
    return normalize(values.to(torch.uint8).permute(0, 3, 1, 2), spec)


def _from_bytes(
    data: bytes | bytearray | memoryview, datatype: str, shape: list[int], count: int, where: str
) -> Tensor:
    """The elements of a binary tensor, after its size is checked against its shape and datatype."""
    dtype, itemsize = BINARY_TYPES[datatype]
    if len(data) != count * itemsize:
        raise BadInput(
            f"{where} has {len(data)} bytes of binary data; shape {shape} of {datatype} needs {count * itemsize}"
        )
    values = torch.frombuffer(bytearray(data), dtype=dtype)  # a copy: the request's buffer stays untouched
    return values.to(torch.int64) if dtype == torch.uint8 else values


def requested_outputs(names: Sequence[str] | None) -> list[str]:
    """The outputs asked for, in the order asked (all of them when none is named)."""
    if not names:
        return list(OUTPUTS)
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise BadInput(f"unknown output(s) {unknown}; this model has {', '.join(OUTPUTS)}")
    return list(names)


def outputs_from(results: list[ImageResult], num_classes: int, num_blocks: int, names: list[str]) -> list[OutputTensor]:
    n = len(results)
    build = {
        "logits": lambda: OutputTensor("logits", "FP32", [n, num_classes], torch.stack([r.logits for r in results])),
        "keep_mask": lambda: OutputTensor(
            "keep_mask", "BOOL", [n, num_blocks], torch.stack([r.keep_mask for r in results])
        ),
        "flops": lambda: OutputTensor("flops", "INT64", [n], torch.tensor([r.flops for r in results])),
    }
    return [build[name]() for name in names]
