"""The v2 binary tensor data extension: binary inputs and outputs give what JSON gives, every framing mistake is a
400 that names what is wrong, and no body, however mangled, gets a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import png_bytes

URL = "/v2/models/blockdrop/infer"
HEADER = "Inference-Header-Content-Length"


def _pixels(n: int = 2) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.stack([np.asarray(Image.open(BytesIO(png_bytes(seed=s)))) for s in range(1, n + 1)])


def _framed(header: dict, binary: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + binary, {HEADER: str(len(text))}


def _json_outputs(client, pixels: np.ndarray) -> dict[str, list]:
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.flatten().tolist()}
    response = client.post(URL, json={"inputs": [tensor]})
    assert response.status_code == 200
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def _split(response) -> tuple[dict, bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


DTYPES = {"FP32": np.float32, "BOOL": np.bool_, "INT64": np.int64}


def test_binary_inputs_and_outputs_give_what_json_gives(client):
    pixels = _pixels()
    expected = _json_outputs(client, pixels)
    body, headers = _framed(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        pixels.tobytes(),
    )
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    header, binary = _split(response)
    assert header["id"] == "r1"
    offset = 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        values = np.frombuffer(binary[offset : offset + size], dtype=DTYPES[output["datatype"]])
        offset += size
        assert values.reshape(output["shape"]).flatten().tolist() == pytest.approx(expected[output["name"]])
    assert offset == len(binary)


def test_an_output_s_own_flag_wins_over_the_request_s(client):
    pixels = _pixels(1)
    body, headers = _framed(
        {
            "inputs": [
                {"name": "images", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.flatten().tolist()}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}, {"name": "flops"}],
            "parameters": {"binary_data_output": True},
        },
        b"",
    )
    header, binary = _split(client.post(URL, content=body, headers=headers))
    logits, flops = header["outputs"]
    assert "data" in logits and "parameters" not in logits
    assert "data" not in flops and flops["parameters"]["binary_data_size"] == 8 == len(binary)
    # JSON only when nothing asks for binary: a plain JSON response without the header
    plain = client.post(URL, json={"inputs": [json.loads(body[: int(headers[HEADER])])["inputs"][0]]})
    assert HEADER.lower() not in plain.headers and plain.json()["outputs"][0]["name"] == "logits"


def test_fp32_binary_input_matches_json(client, artifacts):
    from models.artifacts import read_manifest
    from service.imaging import ImagePreprocessor

    spec = read_manifest(artifacts["tiny-blockdrop"]).input
    fp32 = np.stack([ImagePreprocessor(spec, 10**6)(png_bytes(seed=s)).numpy() for s in (1, 2)]).astype(np.float32)
    json_body = {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": list(fp32.shape), "data": fp32.flatten().tolist()}]
    }
    expected = {o["name"]: o["data"] for o in client.post(URL, json=json_body).json()["outputs"]}
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(fp32.shape),
                "parameters": {"binary_data_size": fp32.nbytes},
            }
        ]
    }
    body, headers = _framed(header, fp32.tobytes())
    got = {o["name"]: o["data"] for o in client.post(URL, content=body, headers=headers).json()["outputs"]}
    assert got["keep_mask"] == expected["keep_mask"] and got["flops"] == expected["flops"]
    assert got["logits"] == pytest.approx(expected["logits"], abs=1e-5)


def _uint8_header(size) -> dict:
    return {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "parameters": {"binary_data_size": size}}
        ]
    }


@pytest.mark.parametrize(
    ("header_length", "header", "binary", "fragment"),
    [
        ("abc", _uint8_header(3072), bytes(3072), "must be a whole number of bytes, got 'abc'"),
        ("-5", _uint8_header(3072), bytes(3072), "whole number of bytes"),
        ("999999", _uint8_header(3072), bytes(3072), "says 999999 bytes of JSON"),
        (None, _uint8_header(-1), bytes(3072), "binary_data_size must be a whole number of bytes, got -1"),
        (None, _uint8_header(True), bytes(3072), "got True"),
        (None, _uint8_header(3.5), bytes(3072), "got 3.5"),
        (None, _uint8_header(10**12), bytes(3072), "only 3072 bytes of binary data are left"),
        (
            None,
            _uint8_header(3000),
            bytes(3000),
            "has 3000 bytes of binary data; shape [1, 32, 32, 3] of UINT8 needs 3072",
        ),
        (None, _uint8_header(3072), bytes(3100), "the inputs' binary_data_size add up to 3072"),
        (None, {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3]}]}, b"", "neither data nor"),
        (
            None,
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "INT8",
                        "shape": [1, 32, 32, 3],
                        "parameters": {"binary_data_size": 3072},
                    }
                ]
            },
            bytes(3072),
            "datatype must be FP32",
        ),
        (
            None,
            _uint8_header(3072) | {"parameters": {"binary_data_output": "yes"}},
            bytes(3072),
            "must be true or false",
        ),
    ],
)
def test_framing_mistakes_are_400s_that_say_what_is_wrong(client, header_length, header, binary, fragment):
    body, headers = _framed(header, binary)
    if header_length is not None:
        headers = {HEADER: header_length}
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_the_server_advertises_the_extension(client):
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


_sizes = st.one_of(
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 3072, 12288, 3071]),
    st.floats(),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)
_inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["images", "pixels", ""]),
        "datatype": st.sampled_from(["UINT8", "FP32", "INT64", "BOOL", "BYTES", "fp32", ""]),
        "shape": st.lists(st.integers(-3, 70000), max_size=5),
    },
    optional={
        "parameters": st.fixed_dictionaries({"binary_data_size": _sizes}),
        "data": st.lists(st.integers(0, 300), max_size=8),
    },
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=st.lists(_inputs, max_size=3),
    binary=st.binary(max_size=13000),
    header_delta=st.one_of(st.integers(-50, 50), st.none()),
    truncate=st.integers(0, 64),
    garbage_header=st.sampled_from([None, "", "x", "1e3", "-1", "  7", "99999999999999999999"]),
)
def test_no_mangled_binary_body_gets_a_5xx(client, inputs, binary, header_delta, truncate, garbage_header):
    text = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    body = (text + binary)[: max(0, len(text) + len(binary) - truncate)]
    headers = {}
    if garbage_header is not None:
        headers[HEADER] = garbage_header
    elif header_delta is not None:
        headers[HEADER] = str(len(text) + header_delta)
    response = client.post(URL, content=body, headers=headers)
    if response.status_code != 200:  # a well-formed request may come out of the draw now and then
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert "error" in response.json()
