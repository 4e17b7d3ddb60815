"""Wire models of the Open Inference Protocol v2 (REST), as the KServe / Triton specification names them.

Only the shape of the JSON lives here; what a tensor must hold for a given model is checked by the data plane
(``service/tensors.py``), so that every protocol gets the same checks and the same messages.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        default=None,
        description="the tensor's elements, flat or nested, in row-major order; absent when the tensor is sent as "
        "binary data after the JSON header (parameters.binary_data_size)",
    )


class RequestOutput(_Wire):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Wire):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="exactly one image tensor")
    outputs: list[RequestOutput] | None = Field(default=None, description="default: every output")


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(default=None, description="absent for an output sent as binary data")


class InferenceResponse(_Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ServerMetadataResponse(_Wire):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(_Wire):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(_Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerLiveResponse(_Wire):
    live: bool


class ServerReadyResponse(_Wire):
    ready: bool


class ModelReadyResponse(_Wire):
    name: str
    ready: bool


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place, for an OpenAPI body the route reads itself."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
