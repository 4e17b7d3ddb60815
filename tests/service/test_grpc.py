"""The v2 gRPC service on the real server process: tritonclient's gRPC client with raw tensors, typed contents,
the same answers as ``/v1/classify``; status codes for bad input, unknown models, overload and shutdown; and a
fuzz of malformed requests that never gets more than INVALID_ARGUMENT-like refusals."""

from __future__ import annotations

import concurrent.futures
import io
import signal
import time

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.service.conftest import metric, png_bytes
from tests.service.live_server import Server

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
SERVER_NAME = "api-grpc-test"  # the module's server's BLOCKDROP_API_SERVER_NAME (X-Served-By)


@pytest.fixture(scope="module")
def server(served_variants):
    running = Server(served_variants, api_server_name=SERVER_NAME)
    yield running
    assert running.stop()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _pixels(seeds) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(seed=s)))) for s in seeds])


def test_tritonclient_grpc_matches_v1(server):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("blockdrop")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    assert [o.name for o in client.get_model_metadata("blockdrop").outputs] == ["logits", "keep_mask", "flops"]
    pixels = _pixels((1, 2))
    images = triton.InferInput("images", list(pixels.shape), "UINT8")
    images.set_data_from_numpy(pixels)
    result = client.infer("blockdrop", [images])
    for i, seed in enumerate((1, 2)):
        v1 = httpx.post(
            f"{server.url}/v1/classify?variant=blockdrop",
            content=png_bytes(seed=seed),
            headers={"content-type": "image/png"},
        ).json()
        assert int(result.as_numpy("logits")[i].argmax()) == v1["prediction"]["class_id"]
        assert "".join("1" if k else "0" for k in result.as_numpy("keep_mask")[i]) == v1["blocks"]["mask"]
        assert int(result.as_numpy("flops")[i]) == v1["flops"]["executed"]


def test_typed_contents_match_raw_contents(stub):
    pixels = _pixels((3,))
    typed = pb.ModelInferRequest(model_name="full", id="t1")
    tensor = typed.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    tensor.contents.uint_contents.extend(pixels.flatten().tolist())
    raw = pb.ModelInferRequest(model_name="full")
    raw.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    raw.raw_input_contents.append(pixels.tobytes())
    raw.outputs.add(name="flops")
    a, b = stub.ModelInfer(typed), stub.ModelInfer(raw)
    assert a.id == "t1" and [o.name for o in a.outputs] == ["logits", "keep_mask", "flops"]
    assert [o.name for o in b.outputs] == ["flops"] and b.raw_output_contents[0] == a.raw_output_contents[2]


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: r.raw_input_contents.append(b"\0" * 3072), grpc.StatusCode.INVALID_ARGUMENT, "one per input"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 16), grpc.StatusCode.INVALID_ARGUMENT, "shape must be"),
        (lambda r: setattr(r.inputs[0], "datatype", "INT8"), grpc.StatusCode.INVALID_ARGUMENT, "datatype must be"),
        (lambda r: r.outputs.add(name="probs"), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 1000), grpc.StatusCode.RESOURCE_EXHAUSTED, "the limit is"),
    ],
)
def test_bad_requests_get_their_status_codes(stub, build, code, fragment):
    request = pb.ModelInferRequest(model_name="full")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)
    build(request)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request)
    assert refused.value.code() == code and fragment in refused.value.details()


def test_an_unknown_model_is_not_found_for_readiness_and_metadata(stub):
    for call in (stub.ModelReady, stub.ModelMetadata):
        with pytest.raises(grpc.RpcError) as refused:
            call(pb.ModelReadyRequest(name="nope") if call is stub.ModelReady else pb.ModelMetadataRequest(name="nope"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_version_other_than_the_advertised_one_is_not_found(stub):
    assert list(stub.ModelMetadata(pb.ModelMetadataRequest(name="blockdrop")).versions) == ["1"]
    assert stub.ModelReady(pb.ModelReadyRequest(name="blockdrop", version="1")).ready
    request = pb.ModelInferRequest(model_name="blockdrop", model_version="1")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(bytes(3072))
    assert stub.ModelInfer(request).model_version == "1"
    request.model_version = "2"
    for call, message in (
        (stub.ModelInfer, request),
        (stub.ModelReady, pb.ModelReadyRequest(name="blockdrop", version="2")),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="blockdrop", version="2")),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(message)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "served as version 1" in refused.value.details()


def test_a_routing_metadata_key_given_twice_is_an_invalid_argument(stub):
    request = pb.ModelInferRequest(model_name="default")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(bytes(3072))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, metadata=[("x-variant", "full"), ("x-variant", "blockdrop")])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "give it once" in refused.value.details()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    datatype=st.sampled_from(["UINT8", "FP32", "INT64", "BOOL", "BYTES", ""]),
    shape=st.lists(st.integers(-5, 2**40), max_size=5),
    raw=st.lists(st.binary(max_size=13000), max_size=3),
    typed=st.lists(st.integers(0, 2**32 - 1), max_size=64),
    inputs=st.integers(0, 3),
)
def test_no_malformed_grpc_request_gets_an_internal_error(stub, datatype, shape, raw, typed, inputs):
    request = pb.ModelInferRequest(model_name="full")
    for _ in range(inputs):
        tensor = request.inputs.add(name="images", datatype=datatype, shape=[max(s, 0) for s in shape])
        tensor.contents.uint_contents.extend(typed)
    request.raw_input_contents.extend(raw)
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in REFUSALS, (error.code(), error.details())


def test_bytes_that_are_no_message_and_methods_not_served_are_refused_without_an_error_logged(server):
    """grpcio's generated registration raised for both: a message that did not parse was UNKNOWN (a DecodeError),
    a method of Triton's service not served here (a client's repository probe, streaming inference) raised
    NotImplementedError; each logged as an error with its traceback, every call."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    before, served_by = server.logged(), f"{SERVER_NAME}/{server.process.pid}"

    def call(method: str, payload: bytes, streaming: bool = False) -> grpc.RpcError:
        path = f"/inference.GRPCInferenceService/{method}"
        with pytest.raises(grpc.RpcError) as refused:
            if streaming:
                list(channel.stream_stream(path)(iter([payload]), timeout=10))
            else:
                channel.unary_unary(path)(payload, timeout=10)
        return refused.value

    for method in ("ModelInfer", "ServerLive", "ModelMetadata"):
        for garbage in (b"\xff" * 10, b"\x0a\x50short"):  # a bad tag; a field longer than the message
            refused = call(method, garbage)
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, refused.details())
            assert f"not a valid {method}Request protobuf message" in refused.details()
            assert dict(refused.trailing_metadata())["x-served-by"] == served_by  # as every answer names it
    for method, streaming in (("RepositoryIndex", False), ("ModelStatistics", False), ("ModelStreamInfer", True)):
        refused = call(method, pb.RepositoryIndexRequest().SerializeToString(), streaming)
        assert refused.code() == grpc.StatusCode.UNIMPLEMENTED
        assert f"{method} is not served" in refused.details() and "ModelInfer" in refused.details()
        assert dict(refused.trailing_metadata())["x-served-by"] == served_by
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10)
    assert pb.ServerLiveResponse.FromString(live).live  # (the empty message is a valid one)
    channel.close()
    time.sleep(0.3)
    assert server.logged()[len(before) :] == ""


def test_overload_and_shutdown_over_grpc(served_variants):
    server = Server(served_variants, queue_limit=2, max_images_per_request=2, max_batch_size=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)

    def call(_):
        try:
            stub.ModelInfer(request, timeout=60)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(call, range(96)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        # shutdown: calls in flight finish, later ones are UNAVAILABLE (or cannot connect once it is gone)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            in_flight = [pool.submit(call, i) for i in range(8)]
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            codes = [future.result() for future in in_flight]
        assert grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert server.exited_cleanly()
    finally:
        channel.close()
        if server.process.poll() is None:
            server.stop()


def test_domain_errors_map_once_each_to_a_grpc_status():
    from service.api.grpc_v2 import status_of
    from service.errors import BadInput, DeadlineExceeded, NotFound, Overloaded, PayloadTooLarge, Unprocessable
    from service.worker import WorkerUnavailable

    expected = {
        BadInput("x"): grpc.StatusCode.INVALID_ARGUMENT,
        Unprocessable("x"): grpc.StatusCode.INVALID_ARGUMENT,
        NotFound("x"): grpc.StatusCode.NOT_FOUND,
        Overloaded("x", 1): grpc.StatusCode.RESOURCE_EXHAUSTED,
        PayloadTooLarge("x"): grpc.StatusCode.RESOURCE_EXHAUSTED,
        DeadlineExceeded("x"): grpc.StatusCode.DEADLINE_EXCEEDED,
        WorkerUnavailable("x"): grpc.StatusCode.UNAVAILABLE,
    }
    assert {type(e): status_of(e, draining=False) for e in expected} == {type(e): c for e, c in expected.items()}
    assert status_of(Overloaded("the service is shutting down", 1), draining=True) == grpc.StatusCode.UNAVAILABLE


def test_the_virtual_model_routes_over_grpc_as_over_http(server, stub):
    pixels = _pixels((5,))
    request = pb.ModelInferRequest(model_name="default")
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    for key in ("alice", "bob", "carol", "dave"):
        over_http = httpx.post(
            f"{server.url}/v1/classify",
            content=png_bytes(seed=5),
            headers={"content-type": "image/png", "x-client-id": key},
        ).json()["variant"]
        by_metadata = stub.ModelInfer(request, metadata=[("x-client-id", key)])
        request.parameters["client_id"].string_param = key
        by_parameter = stub.ModelInfer(request)
        del request.parameters["client_id"]
        assert by_metadata.parameters["variant"].string_param == over_http
        assert by_parameter.parameters["variant"].string_param == over_http
    request.parameters["variant"].string_param = "full"
    assert stub.ModelInfer(request).parameters["variant"].string_param == "full"


def test_the_request_id_comes_back_as_metadata(stub):
    request = pb.ModelInferRequest(model_name="full")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)
    _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "grpc-7")])
    assert dict(call.initial_metadata())["x-request-id"] == "grpc-7"
    _, call = stub.ModelInfer.with_call(request)
    assert len(dict(call.initial_metadata())["x-request-id"]) == 32


def test_every_answer_names_the_process_that_served_it(server, stub):
    """``X-Served-By`` on HTTP (the fast path, FastAPI routes, refusals) and ``x-served-by`` as gRPC metadata: the
    name the server process was started with, and its pid."""
    served_by = f"{SERVER_NAME}/{server.process.pid}"
    png, tensor = png_bytes(seed=1), {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3]}
    answers = {
        "fast path": httpx.post(f"{server.url}/v1/classify", content=png, headers={"content-type": "image/png"}),
        "fast path, 404": httpx.post(
            f"{server.url}/v1/classify?variant=nope", content=png, headers={"content-type": "image/png"}
        ),
        "GET /v1/models": httpx.get(f"{server.url}/v1/models"),
        "v2 infer": httpx.post(f"{server.url}/v2/models/full/infer", json={"inputs": [tensor | {"data": [0] * 3072}]}),
        "v2 infer, 400": httpx.post(f"{server.url}/v2/models/full/infer", json={"inputs": [tensor | {"data": [0]}]}),
        "FastAPI validation, 422": httpx.post(
            f"{server.url}/v1/classify?top_k=0", content=png, headers={"content-type": "image/png"}
        ),
    }
    assert {what: answer.status_code for what, answer in answers.items()} == {
        "fast path": 200,
        "fast path, 404": 404,
        "GET /v1/models": 200,
        "v2 infer": 200,
        "v2 infer, 400": 400,
        "FastAPI validation, 422": 422,
    }
    assert {what: answer.headers.get_list("x-served-by") for what, answer in answers.items()} == {
        what: [served_by] for what in answers
    }

    request = pb.ModelInferRequest(model_name="full")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)
    _, call = stub.ModelInfer.with_call(request)
    assert dict(call.initial_metadata())["x-served-by"] == served_by
    request.model_name = "nope"
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request)
    assert dict(refused.value.initial_metadata())["x-served-by"] == served_by
    _, call = stub.ServerLive.with_call(pb.ServerLiveRequest())
    assert dict(call.trailing_metadata())["x-served-by"] == served_by
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert dict(refused.value.trailing_metadata())["x-served-by"] == served_by


def test_a_budget_may_come_as_any_kind_of_number(stub):
    """tritonclient sends a Python int as int64_param, a float as double_param: both are budgets, as a string is."""
    request = pb.ModelInferRequest(model_name="full")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(b"\0" * 3072)
    for kind, value in (("string_param", "0.6"), ("double_param", 0.6), ("int64_param", 1)):
        request.parameters["budget"].Clear()
        setattr(request.parameters["budget"], kind, value)
        answer = stub.ModelInfer(request)  # a valid budget, which a plain network notes it ignored
        assert "ignored" in answer.parameters["note"].string_param, kind
    for kind, value, fragment in (("int64_param", 2, "(0, 1]"), ("bool_param", True, "a string or a number")):
        request.parameters["budget"].Clear()
        setattr(request.parameters["budget"], kind, value)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in refused.value.details()


def test_a_call_its_client_gives_up_on_is_counted_as_a_client_error_not_a_500(server, stub):
    pixels = _pixels(range(16))
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())

    def counted(status: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return metric(text, "blockdrop_requests_total", variant="slow", status=status)

    before = counted("400"), counted("500")
    with pytest.raises(grpc.RpcError) as gave_up:
        stub.ModelInfer(request, timeout=0.05)  # sixteen images through a ResNet-110 take longer
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while counted("400") == before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (counted("400"), counted("500")) == (before[0] + 1, before[1])
    assert '"status": 500' not in server.logged()
