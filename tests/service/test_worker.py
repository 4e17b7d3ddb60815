"""Inference in worker processes: the same answers as in-process inference, a clean start and stop, and a crash
that gives clear 503s, shows in readiness and metrics, and ends in a new worker rather than a hang."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import service.fork_server as fork_server_module
import service.worker as worker_module
from service.app import create_app
from service.cluster.processes import alive, descendants, parent, status
from service.config import VariantSettings
from service.variants import ExecutionOptions, load_variant
from service.worker import InferenceWorker, WorkerSpec, WorkerUnavailable
from tests.conftest import eventually
from tests.service.conftest import make_settings, metric_on, png_bytes
from tests.service.live_server import Server

PNG = {"content-type": "image/png"}


def _spec(artifact, mode: str, max_batch: int = 8) -> tuple[WorkerSpec, object]:
    settings = VariantSettings(name="v", artifact=artifact, mode=mode)
    variant = load_variant(settings, "cpu")
    spec = WorkerSpec(
        settings, "cpu", 1, True, max_batch, (3, 32, 32), len(variant.manifest.classes), variant.num_blocks
    )
    return spec, variant


@pytest.mark.parametrize("kind", ["tiny-blockdrop", "tiny-resnet", "tiny-biglittle"])
def test_a_worker_answers_exactly_as_the_model_in_process(artifacts, kind):
    spec, variant = _spec(artifacts[kind], "blockdrop" if kind == "tiny-blockdrop" else "full")
    worker = InferenceWorker(spec, answer_timeout_s=30)
    assert worker.cuda_graphs is None
    worker.start()
    assert worker.cuda_graphs is False  # as the child reported when ready: never on a CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's: the same kernels, so the same bits
    try:
        for rows in (1, 5, 8):  # the shared buffers carry exactly the rows of each batch
            batch = torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(rows))
            mine, theirs = worker.infer(batch), variant.infer(batch)
            assert torch.equal(mine.logits, theirs.logits)
            assert torch.equal(mine.keep_mask, theirs.keep_mask) and torch.equal(mine.flops, theirs.flops)
            thresholds = torch.linspace(0.2, 0.8, rows)  # per-row thresholds cross the hand-over too
            mine, theirs = worker.infer(batch, thresholds), variant.infer(batch, thresholds)
            assert torch.equal(mine.keep_mask, theirs.keep_mask) and torch.equal(mine.flops, theirs.flops)
    finally:
        torch.set_num_threads(threads)
        worker.stop()
    assert not worker.alive
    with pytest.raises(WorkerUnavailable):
        worker.infer(torch.zeros(1, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_worker_forked_from_the_fork_server_runs_its_model_on_the_gpu(artifacts):
    """The fork server never touches CUDA, so the workers it forks can: one on the GPU answers as the same model
    does on the GPU in this process (masks and FLOPs equal, logits within float error)."""
    spec, _ = _spec(artifacts["tiny-blockdrop"], "blockdrop")
    spec = dataclasses.replace(spec, device="cuda")
    variant = load_variant(spec.settings, "cuda")
    worker = InferenceWorker(spec, answer_timeout_s=60)
    worker.start()
    try:
        batch = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        mine, theirs = worker.infer(batch), variant.infer(batch)
        assert torch.equal(mine.keep_mask, theirs.keep_mask.cpu()) and torch.equal(mine.flops, theirs.flops.cpu())
        torch.testing.assert_close(mine.logits, theirs.logits.cpu(), rtol=1e-4, atol=1e-4)
    finally:
        worker.stop()


def test_a_worker_runs_the_execution_options_it_is_given(artifacts):
    """The bucketed executor in bf16 crosses into the worker: its answers are the in-process variant's, bit for bit."""
    settings = VariantSettings(name="v", artifact=artifacts["tiny-blockdrop"], mode="blockdrop")
    execution = ExecutionOptions(precision="bf16", executor="bucketed", max_batch_size=8)
    variant = load_variant(settings, "cpu", execution=execution)
    spec, _ = _spec(artifacts["tiny-blockdrop"], "blockdrop")
    spec = dataclasses.replace(spec, execution=execution)
    fp32 = load_variant(settings, "cpu")
    worker = InferenceWorker(spec, answer_timeout_s=30)
    worker.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
        mine, theirs = worker.infer(batch), variant.infer(batch)
        assert torch.equal(mine.logits, theirs.logits) and torch.equal(mine.keep_mask, theirs.keep_mask)
        assert not torch.equal(mine.logits, fp32.infer(batch).logits)  # bf16 really ran in the worker
    finally:
        torch.set_num_threads(threads)
        worker.stop()


def test_a_killed_worker_gives_503s_and_readiness_and_comes_back(artifacts, caplog):
    settings = make_settings(artifacts, inference_workers="process")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz/ready").status_code == 200
        assert client.post("/v1/classify?variant=full", content=png_bytes(seed=1), headers=PNG).status_code == 200
        worker = client.app.state.backend.workers["full"][0]
        killed = worker.pid
        os.kill(killed, signal.SIGKILL)
        seen = []
        assert eventually(lambda: seen.append(client.get("/healthz/ready")) or seen[-1].status_code == 503, 10)
        assert seen[-1].json()["error"] == "not ready: no inference worker answers for full; it is being replaced"
        assert f"the inference worker of variant full (pid {killed}) was ended by SIGKILL" in caplog.messages
        answers = [client.post("/v1/classify?variant=full", content=png_bytes(seed=2), headers=PNG) for _ in range(3)]
        for answer in answers:  # refused plainly while the worker restarts, or answered by the new one
            assert answer.status_code in (200, 503), answer.text
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1" and "worker" in answer.json()["error"]
        assert eventually(lambda: client.get("/healthz/ready").status_code == 200, 60)
        assert client.post("/v1/classify?variant=full", content=png_bytes(seed=3), headers=PNG).status_code == 200
        assert client.post("/v1/classify?variant=blockdrop", content=png_bytes(seed=3), headers=PNG).status_code == 200
        assert metric_on(client, "blockdrop_worker_restarts_total", variant="full") == 1
        assert metric_on(client, "blockdrop_worker_restarts_total", variant="blockdrop") == 0
        assert metric_on(client, "blockdrop_worker_up", variant="full") == 1
    assert all(not w.alive for replicas in client.app.state.backend.workers.values() for w in replicas)


def test_a_request_deadline_shorter_than_a_batch_gets_504s_and_kills_no_worker(artifacts, served_variants):
    slow = VariantSettings(**served_variants[2] | {"weight": 1})  # a ResNet-110: a batch takes tens of ms
    settings = make_settings(artifacts, variants=[slow], inference_workers="process", request_timeout_s=0.01)
    with TestClient(create_app(settings)) as client:
        worker = client.app.state.backend.workers["slow"][0]
        first = worker.pid
        statuses = [
            client.post("/v1/classify", content=png_bytes(seed=seed), headers=PNG).status_code for seed in range(5)
        ]
        assert 504 in statuses and set(statuses) <= {200, 504}, statuses
        time.sleep(0.5)  # what a kill would have started by now
        assert worker.pid == first and worker.alive
        assert metric_on(client, "blockdrop_worker_restarts_total", variant="slow") == 0
        assert client.get("/healthz/ready").status_code == 200


def _forked_worker(artifacts) -> tuple[InferenceWorker, int, int]:
    """A started worker of the tiny ResNet, its pid, and the pid of the fork server it was forked from."""
    spec, _ = _spec(artifacts["tiny-resnet"], "full")
    worker = InferenceWorker(spec, answer_timeout_s=30, check_every_s=0.1)
    worker.start()
    fork_server = parent(worker.pid)
    assert fork_server != os.getpid()
    return worker, worker.pid, fork_server


def test_a_lost_fork_server_is_started_again_for_the_next_replacement(artifacts):
    """Workers are forked from a fork server (service/fork_server.py); with it killed, the running worker goes on
    answering (and is not taken for dead), and one lost afterwards is still replaced (from a new fork server)."""
    worker, first, fork_server = _forked_worker(artifacts)
    try:
        os.kill(fork_server, signal.SIGKILL)
        assert eventually(lambda: not alive(fork_server), 10)
        time.sleep(0.5)  # five rounds of the supervising thread: the worker is not taken for dead
        assert worker.pid == first
        assert worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: worker.pid not in (None, first) and worker.alive, 30)
        assert worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    finally:
        worker.stop()


def test_a_stopped_fork_server_holds_up_no_batch_and_no_shutdown(artifacts):
    """With the fork server stopped (SIGSTOP), a lost worker's replacement waits for it, but nothing else does: the
    variant is refused at once rather than queued behind the start, the replacement comes once the fork server is
    continued, and stopping the service does not wait for it."""
    worker, first, fork_server = _forked_worker(artifacts)
    os.kill(fork_server, signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: not worker.alive, 5)
        time.sleep(0.5)  # the supervisor is in the start now, waiting for the fork server
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable):
            worker.infer(torch.zeros(2, 3, 32, 32))
        assert time.monotonic() - started < 1
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended by the service if it overstayed FORK_TIMEOUT_S
            os.kill(fork_server, signal.SIGCONT)
    try:
        assert eventually(lambda: worker.pid not in (None, first) and worker.alive, 30)
        assert worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
        fork_server = parent(worker.pid)  # the same one, unless it overstayed FORK_TIMEOUT_S and was replaced
        os.kill(fork_server, signal.SIGSTOP)
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(0.5)
        started = time.monotonic()
        worker.stop(timeout=2)
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended by ``stop``, which does not leave it stopped
            os.kill(fork_server, signal.SIGCONT)
        worker.stop()


def _replaced_from_a_new_fork_server(artifacts, monkeypatch) -> None:
    """With the fork server stopped, a lost worker is replaced from a new one without the stopped one ever being
    continued, and at once: not after the restart backoff (an hour here), since the worker was not at fault."""
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF_S", 3600.0)
    worker, first, fork_server = _forked_worker(artifacts)
    os.kill(fork_server, signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: worker.pid not in (None, first) and worker.alive, 30)
        assert not alive(fork_server)
        assert worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    finally:
        if alive(fork_server):
            os.kill(fork_server, signal.SIGCONT)
        worker.stop()


def test_a_stopped_fork_server_is_ended_and_the_worker_replaced_at_once(artifacts, monkeypatch):
    monkeypatch.setattr(fork_server_module, "FORK_TIMEOUT_S", 3600.0)  # seen stopped: not waited out
    _replaced_from_a_new_fork_server(artifacts, monkeypatch)


def test_a_fork_server_that_does_not_fork_is_ended_at_the_deadline_and_the_worker_replaced(artifacts, monkeypatch):
    monkeypatch.setattr(fork_server_module, "FORK_TIMEOUT_S", 1.0)
    monkeypatch.setattr(fork_server_module, "_stopped", lambda pid: False)  # hung some other way
    _replaced_from_a_new_fork_server(artifacts, monkeypatch)


def test_an_unexpected_failure_to_restart_is_tried_again_not_the_end_of_the_supervision(artifacts, monkeypatch):
    """A restart that fails with an error nobody foresaw (here a TypeError) is retried after the backoff, like a
    failed load; it does not end the supervising thread, which would leave the variant down for good."""
    worker, first, _ = _forked_worker(artifacts)
    launch, failures = InferenceWorker.launch, []

    def launch_failing_once(self: InferenceWorker) -> None:
        if not failures:
            failures.append(1)
            raise TypeError("cannot pickle the unforeseen")
        launch(self)

    monkeypatch.setattr(InferenceWorker, "launch", launch_failing_once)
    try:
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: worker.pid not in (None, first) and worker.alive, 30)
        assert failures == [1]
    finally:
        worker.stop()


def test_a_worker_that_stops_answering_is_replaced(artifacts):
    """A hung worker (SIGSTOP) fails its batch at the answer deadline and is killed and replaced."""
    spec, _ = _spec(artifacts["tiny-resnet"], "full")
    restarts = []
    worker = InferenceWorker(spec, answer_timeout_s=0.5, on_restart=lambda: restarts.append(1), check_every_s=0.1)
    worker.start()
    try:
        first = worker.pid
        os.kill(first, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="stopped"):
            worker.infer(torch.zeros(2, 3, 32, 32))
        assert time.monotonic() - started < 5
        assert eventually(lambda: worker.alive and restarts, 60)
        assert worker.pid != first and worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    finally:
        worker.stop()


def test_replicas_share_one_queue(artifacts):
    settings = make_settings(artifacts, inference_workers="process", worker_replicas=2)
    with TestClient(create_app(settings)) as client:
        backend = client.app.state.backend
        assert [len(replicas) for replicas in backend.workers.values()] == [2, 2]
        for seed in range(4):
            response = client.post("/v1/classify?variant=full", content=png_bytes(seed=seed), headers=PNG)
            assert response.status_code == 200
        assert metric_on(client, "blockdrop_worker_up", variant="full") == 2


def test_a_runtime_threshold_reaches_the_worker_processes(artifacts):
    """Workers hold a copy of the variant: the threshold travels with each image, so a change applies at once."""
    settings = make_settings(artifacts, inference_workers="process", admin_token="t")
    with TestClient(create_app(settings)) as client:
        masks = {}
        for threshold in (0.001, 0.999):
            changed = client.put(
                "/v1/variants/blockdrop", json={"threshold": threshold}, headers={"authorization": "Bearer t"}
            )
            assert changed.status_code == 200
            answer = client.post("/v1/classify?variant=blockdrop", content=png_bytes(seed=1), headers=PNG).json()
            assert answer["compute"]["threshold"] == threshold
            masks[threshold] = answer["blocks"]["mask"]
        assert masks == {0.001: "111", 0.999: "000"}


def _descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (zombies, already dead, left out): the workers are children of
    multiprocessing's fork server, itself a child of the service."""
    return {child for child in descendants(pid) if alive(child)}


def test_a_hung_worker_is_noticed_by_its_heartbeat_without_any_request(artifacts):
    spec, _ = _spec(artifacts["tiny-resnet"], "full")
    restarts = []
    # the answer deadline is long: only the heartbeat can notice the hang in time
    worker = InferenceWorker(spec, answer_timeout_s=60, on_restart=lambda: restarts.append(1), heartbeat_timeout_s=1)
    worker.start()
    try:
        first = worker.pid
        assert worker.alive
        os.kill(first, signal.SIGSTOP)
        assert eventually(lambda: not worker.alive, 2.5)
        assert eventually(lambda: worker.alive and restarts, 60)
        assert worker.pid != first and first not in _descendants(os.getpid())
        assert worker.infer(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)
    finally:
        worker.stop()


def test_a_hung_variant_is_routed_around_and_pinned_requests_are_refused_at_once(artifacts):
    settings = make_settings(artifacts, inference_workers="process", request_timeout_s=60, worker_heartbeat_timeout_s=1)
    with TestClient(create_app(settings)) as client:
        worker = client.app.state.backend.workers["full"][0]
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            assert eventually(lambda: metric_on(client, "blockdrop_worker_up", variant="full") == 0, 2.5)
            models = {m["name"]: m["ready"] for m in client.get("/v1/models").json()["models"]}
            assert models == {"blockdrop": True, "full": False}
            assert client.get("/v2/models/full/ready").status_code == 503
            assert client.get("/v2/models/blockdrop/ready").status_code == 200
            # unkeyed traffic goes to the variant that answers
            unkeyed = [client.post("/v1/classify", content=png_bytes(seed=s), headers=PNG) for s in range(12)]
            assert [r.status_code for r in unkeyed] == [200] * 12
            assert {r.json()["variant"] for r in unkeyed} == {"blockdrop"}
            # pinned traffic: a 503 now, not after the 60 s request deadline
            started = time.monotonic()
            pinned = client.post("/v1/classify?variant=full", content=png_bytes(), headers=PNG)
            assert pinned.status_code == 503 and pinned.headers["retry-after"] == "1"
            assert time.monotonic() - started < 30
        finally:
            os.kill(worker.pid, signal.SIGKILL) if worker.pid else None
        assert eventually(
            lambda: client.post("/v1/classify?variant=full", content=png_bytes(), headers=PNG).is_success, 60
        )


def test_shutdown_with_a_hung_worker_starts_nothing_and_leaves_no_process(artifacts):
    settings = make_settings(artifacts, inference_workers="process", worker_heartbeat_timeout_s=1)
    others = _descendants(os.getpid())  # e.g. multiprocessing's helpers, from earlier tests
    with TestClient(create_app(settings)) as client:
        backend = client.app.state.backend
        workers = {w.pid for replicas in backend.workers.values() for w in replicas}
        assert workers <= _descendants(os.getpid())
        os.kill(backend.workers["full"][0].pid, signal.SIGSTOP)
        # a request in flight on the hung worker while the service shuts down
        answers = []
        pinned = threading.Thread(
            target=lambda: answers.append(client.post("/v1/classify?variant=full", content=png_bytes(), headers=PNG))
        )
        pinned.start()
        time.sleep(0.3)
    pinned.join(30)
    assert [a.status_code for a in answers] == [503]
    # the context exit ran the service's shutdown: every worker is gone and none was started meanwhile
    assert eventually(lambda: not _descendants(os.getpid()) - others - _helpers(), 15)
    assert all(not w.alive for replicas in backend.workers.values() for w in replicas)


def test_a_killed_service_leaves_no_worker_behind(artifacts):
    """SIGKILL runs no shutdown: the fork server ends with the service, and each worker when its pipe to the
    service closes (or, busy loading, when its lifeline reads end-of-file)."""
    variants = [{"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full"}]
    server = Server(variants, inference_workers="process", worker_replicas=2)
    below = _descendants(server.process.pid)
    workers = {pid for pid in below if (found := status(pid)) and found.name == "bd:full"}
    assert len(workers) == 2
    server.process.kill()
    server.process.wait()
    assert eventually(lambda: all(not alive(pid) for pid in below), 10), "a child outlived the service"


def test_a_sigterm_to_the_services_group_is_the_services_to_act_on_not_its_workers(artifacts):
    """A process manager or a terminal signals the whole process group: the workers must not die of it (they did,
    and the service restarted each during its pre-stop period, answering 503s meanwhile)."""
    variants = [{"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full"}]
    server = Server(variants, own_group=True, inference_workers="process", prestop_s=2)
    os.killpg(server.process.pid, signal.SIGTERM)
    statuses = []
    for _ in range(6):  # through the pre-stop period
        answer = httpx.post(f"{server.url}/v1/classify", content=png_bytes(seed=1), headers=PNG, timeout=10)
        statuses.append(answer.status_code)
        time.sleep(0.25)
    assert statuses == [200] * 6
    assert server.exited_cleanly(), server.logged()
    assert "inference worker" not in server.logged()  # none lost, none restarted


def _helpers() -> set[int]:
    """multiprocessing's resource tracker and fork server (one each, once a process used them): not workers."""
    helpers = set()
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"resource_tracker" in (line := cmdline.read()) or b"forkserver" in line:
                    helpers.add(pid)
        except OSError:
            continue
    return helpers


def test_a_worker_that_cannot_start_is_tried_again_ever_more_slowly(artifacts, tmp_path):
    import shutil

    copy = tmp_path / "gone"
    shutil.copytree(artifacts["tiny-resnet"], copy)
    spec, _ = _spec(copy, "full")
    worker = InferenceWorker(spec, answer_timeout_s=30)
    worker.start()
    launches = []
    original = worker.launch
    worker.launch = lambda: (launches.append(time.monotonic()), original())[1]
    try:
        shutil.rmtree(copy)  # the artifact is gone: every new worker fails to load
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(6)
        # 1 s, then 2 s, then 4 s between tries (plus each failed load): not a try every check (0.2 s)
        assert 1 <= len(launches) <= 3, launches
        gaps = [b - a for a, b in itertools.pairwise(launches)]
        assert all(gap >= 1 for gap in gaps)
    finally:
        worker.stop()


def test_a_model_that_captures_cuda_graphs_gets_its_capture_budget_on_top_of_the_start_up_timeout():
    from service.variants import ExecutionOptions
    from service.worker import START_TIMEOUT_S, start_timeout_s

    assert start_timeout_s(ExecutionOptions()) == START_TIMEOUT_S
    assert start_timeout_s(ExecutionOptions(capture_budget_s=300)) == START_TIMEOUT_S  # no graphs: no capture
    assert start_timeout_s(ExecutionOptions(cuda_graphs=True, capture_budget_s=300)) == START_TIMEOUT_S + 300
