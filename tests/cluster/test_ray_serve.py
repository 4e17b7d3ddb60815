"""The service on a real local Ray cluster: the same answers as one process, the A/B split and stickiness,
feedback and metrics across ingress replicas, autoscaling, a killed replica, overload and a redeploy under load.

One cluster and one deployment for the module (starting them takes a while on 2 cores); the tests run in file
order and each leaves the deployment as it found it (but the last, a redeploy). Run them alone: ``pytest -m ray``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.cluster import processes
from service.config import Settings
from service.routing import Router
from tests.service.conftest import metric
from tests.service.live_server import exchange_until_closed, free_port

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from service.cluster.launch import deploy, start_cluster, undeploy  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "models" / "checkpoints"
SAMPLES = sorted((ROOT / "service" / "samples").glob("*.png"))
TOKEN = "cluster-test-token"
STATE_DIR = Path(tempfile.mkdtemp(prefix="blockdrop-ray-state-"))  # the rollouts' store, shared by the replicas
APP = "blockdrop-test"
PNG = {"content-type": "image/png"}


def settings(port: int, threshold: float | None = None, full_weight: float = 1.0) -> Settings:
    # short delays and look-back (Ray warns that the look-back is below its deprecated metrics_interval_s
    # default; the interval that counts is the push interval the cluster fixture sets). The ingress sends the
    # requests of one event-loop turn in one call, so 12 clients keep only 1-3 calls in flight at the variant on
    # a busy 2-core machine: a target of 2 calls had it scale up and down around it, each new replica stopped
    # while still starting (10-20 s here); a target of 1 and a downscale delay longer than a start do not
    fast = {"upscale_delay_s": 0.5, "downscale_delay_s": 10.0, "look_back_period_s": 2.0}
    variants = [
        {
            "name": "blockdrop",
            "artifact": str(CHECKPOINTS / "cifar10-resnet32-blockdrop"),
            "mode": "blockdrop",
            "threshold": threshold,
            "ray": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, **fast},
        },
        {
            "name": "full",
            "artifact": str(CHECKPOINTS / "cifar10-resnet32-e200"),
            "mode": "full",
            "weight": full_weight,
            # a small queue in front of it, so that the overload test can fill it
            "ray": {"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 4, "max_queued_requests": 4},
        },
    ]
    return Settings(
        variants=variants,
        port=port,
        grpc_port=0,
        admin_token=TOKEN,
        request_timeout_s=5.0,
        header_timeout_s=2.0,
        body_timeout_s=2.0,
        state_dir=STATE_DIR,
        rollout_interval_s=0.5,
        ray={"app_name": APP, "ingress_replicas": 2, "ingress_cpus": 0.25, "sync_interval_s": 0.5},
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    # replicas report their load often, so that autoscaling reacts within the test's patience
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    os.environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    # as blockdrop serve --ray starts one (HAProxy in front, by default)
    haproxy_files = start_cluster(settings(0), num_cpus=2)
    yield
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(haproxy_files)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def service(cluster) -> Iterator[tuple[str, Settings]]:
    port = free_port()
    chosen = settings(port)
    deploy(chosen)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200, 60, "readiness")
    yield url, chosen
    undeploy(chosen)


def wait_until(
    condition: Callable[[], bool], seconds: float, what: str, seen: Callable[[], object] | None = None
) -> None:
    """Until ``condition`` holds; else fail, saying what ``seen`` saw each 5 s (what the cluster did meanwhile)."""
    started = time.monotonic()
    history: list[str] = []
    while (elapsed := time.monotonic() - started) < seconds:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        if seen is not None and len(history) < elapsed / 5:
            history.append(f"{elapsed:.0f} s: {seen()}")
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {seconds:g} s" + "".join(f"\n  {line}" for line in history))


def classify(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", content=body, headers=PNG | headers, timeout=30)


def answer_without_timings(response: dict) -> dict:
    return {k: v for k, v in response.items() if k not in ("request_id", "latency_ms")}


def replica_states(deployment: str) -> Counter:
    status = serve.status().applications[APP].deployments[f"variant-{deployment}"]
    return Counter({str(state): count for state, count in status.replica_states.items()})


def running(deployment: str) -> int:
    return sum(count for state, count in replica_states(deployment).items() if state.endswith("RUNNING"))


class Load:
    """Threads posting images until stopped; every response kept as (status, body)."""

    def __init__(self, url: str, threads: int, variant: str | None = None, keys: list[str] | None = None):
        self.url, self.variant, self.keys = url, variant, keys or ["k"]
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        body = SAMPLES[index % len(SAMPLES)].read_bytes()
        headers = PNG | ({"X-Variant": self.variant} if self.variant else {})
        sent = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                key = self.keys[(index + sent) % len(self.keys)]
                try:
                    response = client.post(
                        f"{self.url}/v1/classify", content=body, headers=headers | {"X-Client-Id": key}
                    )
                    self.results.append((response.status_code, response.text))
                except httpx.HTTPError as error:  # a request with no answer at all: the test fails on it
                    self.results.append((0, repr(error)))
                sent += 1


def test_same_answers_as_the_single_process_service(service):
    url, chosen = service
    local = chosen.model_copy(update={"inference_workers": "thread", "ray": chosen.ray})
    with TestClient(create_app(local)) as single:
        for sample in SAMPLES:
            for variant in ("blockdrop", "full"):
                body = sample.read_bytes()
                here = single.post(f"/v1/classify?variant={variant}&top_k=3", content=body, headers=PNG).json()
                there = httpx.post(
                    f"{url}/v1/classify?variant={variant}&top_k=3", content=body, headers=PNG, timeout=30
                ).json()
                assert there["blocks"] == here["blocks"], sample.name
                assert there["flops"] == here["flops"]
                assert there["compute"] == here["compute"]
                assert [c["class_id"] for c in there["top_k"]] == [c["class_id"] for c in here["top_k"]]
                for mine, theirs in zip(here["top_k"], there["top_k"]):
                    assert theirs["confidence"] == pytest.approx(mine["confidence"], abs=1e-4)
        # the v2 protocol on the virtual model (the A/B split) and on a named variant
        pixels = np.stack([np.asarray(Image.open(sample).convert("RGB")) for sample in SAMPLES[:4]])
        tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
        for model, key in (("default", {"X-Client-Id": "v2-client"}), ("full", {})):
            route = f"/v2/models/{model}/infer"
            here = single.post(route, json={"inputs": [tensor]}, headers=key).json()
            there = httpx.post(f"{url}{route}", json={"inputs": [tensor]}, headers=key, timeout=30).json()
            assert there["model_name"] == here["model_name"]
            outputs = {o["name"]: o for o in here["outputs"]}
            for output in there["outputs"]:
                if output["name"] == "logits":
                    assert output["data"] == pytest.approx(outputs["logits"]["data"], abs=1e-4)
                else:
                    assert output == outputs[output["name"]]
        there = httpx.post(f"{url}/v1/explain?variant=blockdrop", content=body, headers=PNG, timeout=30).json()
        here = single.post("/v1/explain?variant=blockdrop", content=body, headers=PNG).json()
        assert there["keep_probabilities"] == pytest.approx(here.pop("keep_probabilities"), abs=1e-5)
        assert {k: v for k, v in there.items() if k != "keep_probabilities"} == here


def test_ab_split_is_sticky_and_the_same_as_in_one_process_and_feedback_finds_any_replica(service):
    url, chosen = service
    router = Router({v.name: v.weight for v in chosen.variants})
    keys = [f"client-{i}" for i in range(1000)]
    body = SAMPLES[0].read_bytes()

    def one(key: str) -> tuple[str, str, str, str]:
        with httpx.Client(timeout=30) as client:
            # on a busy machine (another test beside this one) the ingress may shed a request with 503 and
            # Retry-After, as under any overload: a client retries it, as this one does
            for _ in range(5):
                served = client.post(f"{url}/v1/classify", content=body, headers=PNG | {"X-Client-Id": key})
                if served.status_code != 503 or "retry-after" not in served.headers:
                    break
                time.sleep(float(served.headers["retry-after"]))
            assert served.status_code == 200, served.text
            answer = served.json()
            feedback = client.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"], "label": "airplane"})
            assert feedback.status_code == 200, feedback.text
            assert feedback.json()["variant"] == answer["variant"]
            return key, answer["variant"], served.headers["x-served-by"], feedback.headers["x-served-by"]

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, keys))
    assert {key: variant for key, variant, _, _ in rows} == {key: router.choose(None, key) for key in keys}
    shares = Counter(variant for _, variant, _, _ in rows)
    assert abs(shares["blockdrop"] / len(keys) - 0.5) < 0.05, shares
    assert len({replica for *_, replica, _ in rows}) == 2, "both ingress replicas should have served"
    crossed = sum(served != fed for *_, served, fed in rows)
    assert crossed > 0, "no feedback went to the other ingress replica"

    # the metrics of either replica describe the whole service: 1,000 images, 1,000 feedbacks
    def whole(text: str) -> bool:
        return metric(text, "blockdrop_feedback_total") >= 1000

    seen = set()

    def both_replicas_report_everything() -> bool:
        response = httpx.get(f"{url}/metrics", timeout=5)
        if whole(response.text):
            seen.add(response.headers["x-served-by"])
        return len(seen) == 2

    wait_until(both_replicas_report_everything, 20, "every ingress replica reporting all the feedback")
    # and so does the A/B report, from either replica
    reports = {}
    while len(reports) < 2:
        response = httpx.get(f"{url}/v1/experiment", timeout=5)
        reports[response.headers["x-served-by"]] = response.json()
    for report in reports.values():
        feedback = {v["name"]: v["feedback"] for v in report["variants"]}
        assert sum(f["n"] for f in feedback.values()) == 1000
        for variant, count in shares.items():
            assert feedback[variant]["n"] == count


def test_an_operator_change_on_one_replica_reaches_every_replica(service):
    url, _ = service
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = SAMPLES[1].read_bytes()
    before = classify(url, body, **{"X-Variant": "blockdrop"}).json()["compute"]["threshold"]
    changed = httpx.put(f"{url}/v1/variants/blockdrop", json={"threshold": 0.7}, headers=auth, timeout=10)
    assert changed.status_code == 200, changed.text
    seen = set()

    def every_replica_uses_it() -> bool:
        response = classify(url, body, **{"X-Variant": "blockdrop"})
        if response.json()["compute"]["threshold"] == 0.7:
            seen.add(response.headers["x-served-by"])
        return len(seen) == 2

    try:
        wait_until(every_replica_uses_it, 15, "the new threshold on both ingress replicas")
    finally:
        httpx.put(f"{url}/v1/variants/blockdrop", json={"threshold": before}, headers=auth, timeout=10)
    assert httpx.put(f"{url}/v1/variants/blockdrop", json={"threshold": 0.7}, timeout=10).status_code == 401


def test_a_variant_scales_up_under_load_and_back_down_when_idle(service):
    url, _ = service
    wait_until(lambda: running("blockdrop") == 1, 60, "one blockdrop replica while idle")
    with Load(url, threads=12, variant="blockdrop") as load:

        def seen() -> str:
            answers = Counter(status for status, _ in load.results)
            return f"replicas {dict(replica_states('blockdrop'))}, answers {dict(answers)}"

        wait_until(lambda: running("blockdrop") == 2, 60, "a second blockdrop replica under load", seen)
    # on a machine busy with other tests the ingress may shed some load (503 + Retry-After), as under any overload
    statuses = Counter(status for status, _ in load.results)
    assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
    assert all("overloaded" in text for status, text in load.results if status == 503), statuses
    wait_until(lambda: running("blockdrop") == 1 and sum(replica_states("blockdrop").values()) == 1, 60, "scale down")


def served_again_by_every_ingress(url: str, variant: str) -> None:
    """Each ingress replica hears of a replacement replica on its own (within a sync interval or so): until it
    does, it may still answer 503 for the variant. Wait until both answer 200."""
    body = SAMPLES[0].read_bytes()
    seen = set()

    def both() -> bool:
        response = classify(url, body, **{"X-Variant": variant})
        if response.status_code == 200:
            seen.add(response.headers["x-served-by"])
        return len(seen) == 2

    wait_until(both, 30, f"both ingress replicas serving {variant} again")


def replica_actor(deployment: str) -> ray.actor.ActorHandle:
    """The one replica actor of ``deployment``."""
    named = ray.util.list_named_actors(all_namespaces=True)
    (actor,) = [a for a in named if f"{APP}#variant-{deployment}#" in a["name"]]
    return ray.get_actor(actor["name"], namespace=actor["namespace"])


def test_a_killed_replica_loses_no_request_silently_and_is_replaced(service):
    url, _ = service
    with Load(url, threads=4, variant="full") as load:
        time.sleep(2)
        ray.kill(replica_actor("full"), no_restart=True)
        time.sleep(4)
    statuses = Counter(status for status, _ in load.results)
    assert set(statuses) <= {200, 503, 504}, statuses
    for status, text in load.results:
        if status != 200:
            assert '"error"' in text, text
    assert statuses[200] > 0
    wait_until(lambda: running("full") == 1, 60, "a replacement replica")
    wait_until(lambda: httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200, 30, "readiness again")
    served_again_by_every_ingress(url, "full")


def test_a_full_queue_is_503_with_retry_after(service):
    """The replica is held (SIGSTOP) while requests arrive one by one, so they pile up in front of it however fast
    this machine is: left running, one replica may keep up with the clients and never let its queue fill, and
    requests that arrive together travel in one call. Released, it answers the ones its queue took."""
    url, _ = service
    body = SAMPLES[2].read_bytes()
    pid = ray.get(replica_actor("full").__ray_call__.remote(lambda _: os.getpid()))

    def one() -> httpx.Response:
        return classify(url, body, **{"X-Variant": "full"})

    def refused() -> bool:
        return any(f.done() and f.result().status_code == 503 for f in futures)

    futures: list[Future[httpx.Response]] = []
    with ThreadPoolExecutor(64) as pool:
        os.kill(pid, signal.SIGSTOP)
        try:  # a request every 30 ms (each its own call) until one is refused, well within the 5 s deadline
            while len(futures) < 64 and not refused():
                futures.append(pool.submit(one))
                time.sleep(0.03)
            wait_until(refused, 1, "a refused request while the replica is held")
        finally:
            os.kill(pid, signal.SIGCONT)
        responses = [f.result() for f in futures]
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0, "the requests its queue took are answered once the replica goes on"
    refusals = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" for r in refusals)
    assert all("overloaded" in r.json()["error"] for r in refusals), refusals[0].text


# Ray's own processes: their listeners are Ray's design (every interface, Ray's token authentication), not ours
RAY_CORE = (
    "/gcs_server",
    "/raylet",
    "ray/autoscaler/_private/monitor.py",
    "ray/dashboard/dashboard.py",
    "ray/_private/log_monitor.py",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "ray::IDLE",
)


def ray_worker_ports() -> set[tuple[int, int]]:
    """(pid, port) of what Ray opens in every worker it runs, on every interface by its design: each actor's
    core-worker gRPC server, and in each Serve replica Serve's inter-deployment gRPC server (bound to [::]:0)."""
    owned = {
        (actor["Pid"], actor["Address"]["Port"])
        for actor in ray._private.state.actors().values()
        if actor["State"] == "ALIVE"
    }
    for named in ray.util.list_named_actors(all_namespaces=True):
        if named["name"].startswith("SERVE_REPLICA::"):
            try:
                replica = ray.get_actor(named["name"], namespace=named["namespace"])
                port = ray.get(
                    replica.__ray_call__.remote(lambda r: (os.getpid(), r._replica_impl._internal_grpc_port))
                )
            except (ValueError, ray.exceptions.RayActorError):  # gone meanwhile (an earlier test killed it)
                continue
            owned.add(port)
    return owned


def haproxies() -> list[tuple[int, Path]]:
    """(pid, config) of the HAProxy processes below this one (the driver of the test cluster)."""
    found = []
    for pid in processes.descendants(os.getpid()):
        words = processes.command_line(pid)
        if words and Path(words[0]).name == "haproxy" and "-f" in words:
            found.append((pid, Path(words[words.index("-f") + 1])))
    return found


def exposed_listeners() -> tuple[list, list[processes.Listener]]:
    """What listens on every interface in the cluster, Ray's own left out; and everything that listens."""
    cluster = processes.descendants(os.getpid())
    ray_core = {pid for pid in cluster if any(m in " ".join(processes.command_line(pid)) for m in RAY_CORE)}
    ray_ports = ray_worker_ports()
    everything = processes.listeners(cluster)
    exposed = [
        (listener, processes.describe(listener.pid))
        for listener in everything
        if listener.every_interface and listener.pid not in ray_core and (listener.pid, listener.port) not in ray_ports
    ]
    return exposed, everything


def test_nothing_the_service_adds_listens_on_every_interface(service):
    _, chosen = service
    # a replica Ray is still stopping or starting (an earlier test scaled down or replaced one) is no live actor,
    # and holds Ray's listeners until it is done; Ray reloads HAProxy as replicas change, the old and the new one
    # holding the port for a moment: looked at again until the cluster settles
    deadline = time.monotonic() + 30
    while True:
        exposed, everything = exposed_listeners()
        fronts = [listener for listener in everything if listener.port == chosen.port]
        if (not exposed and len(fronts) == 1) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert exposed == []
    # and the service's own port is there, on the host asked for, held by HAProxy
    assert [front.host for front in fronts] == ["127.0.0.1"]
    assert fronts[0].pid in {pid for pid, _ in haproxies()}


def test_the_haproxy_admin_socket_is_private(service):
    running = haproxies()
    assert running
    for _, config in running:
        socket_path = config.parent / "admin.sock"
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        private = config.parent.parent  # Ray puts each node's files in a folder named after it
        assert private.name.startswith("bdhap-")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_the_admin_token_is_in_no_deployments_arguments(service):
    """The controller's record of each deployment (its arguments, options and runtime_env, as Ray stores them)
    never holds the token; the replicas have it all the same (the operator-change test uses it)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    for name in ("ingress", "variant-blockdrop", "variant-full"):
        record = ray.get(controller.get_deployment_info.remote(name, APP))
        assert b"blockdrop-test" in record  # it is the record of this application
        assert TOKEN.encode() not in record, name
    url, _ = service
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/v1/variants/full", headers=auth, timeout=10).status_code == 200


def admin(config: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(config.parent / "admin.sock"))
        connection.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: connection.recv(65536), b"")).decode()


def test_a_proxy_with_no_replica_to_send_to_answers_503_with_retry_after(service):
    """Every server of the application's HAProxy backend set to maintenance, as when no ingress replica is left."""
    url, _ = service
    ((_, config),) = haproxies()
    rows = [line.split(",") for line in admin(config, "show stat").splitlines() if line and line[0] != "#"]
    servers = [f"{row[0]}/{row[1]}" for row in rows if row[0].startswith("http-") and row[1] != "BACKEND"]
    assert servers
    try:
        for server in servers:
            admin(config, f"set server {server} state maint")
        response = httpx.get(f"{url}/healthz/live", timeout=10)
    finally:
        for server in servers:
            admin(config, f"set server {server} state ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "retry shortly" in response.json()["error"]
    wait_until(lambda: httpx.get(f"{url}/healthz/live", timeout=2).status_code == 200, 30, "served again")


def test_a_variant_with_no_replica_left_answers_503_with_retry_after(service):
    """Its one replica killed: once the ingress hears of it from Ray's controller (within a health-check period
    and a sync interval; a request sent before that waits for the replacement, up to its deadline: 504), requests
    for it are refused at once until Ray's replacement runs. Ray alone would hold every one of them."""
    url, _ = service
    body = SAMPLES[0].read_bytes()
    refusals = []

    def refused() -> bool:
        # a short wait (wait_until tries again on a timeout): a request Ray holds because the ingress has not heard
        # yet must not use up the window with no replica; one sent once the ingress has heard is refused at once
        response = httpx.post(f"{url}/v1/classify", content=body, headers=PNG | {"X-Variant": "full"}, timeout=1)
        assert response.status_code in (200, 503, 504), response.text
        if response.status_code == 503:
            refusals.append(response)
        return bool(refusals)

    # Ray may have a replacement running before an ingress hears that none was: then kill that one too
    for _ in range(4):
        wait_until(lambda: running("full") == 1, 60, "a running replica to kill")
        ray.kill(replica_actor("full"), no_restart=True)
        with contextlib.suppress(AssertionError):  # a health-check period and a sync interval, with room to spare
            wait_until(refused, 20, "a refusal while the variant has no replica")
        if refusals:
            break
    assert refusals, "no refusal while the variant had no replica, in four tries"
    assert refusals[0].headers["retry-after"] == "1"
    assert "has no running replica" in refusals[0].json()["error"]
    wait_until(lambda: running("full") == 1, 60, "a replacement replica")
    served_again_by_every_ingress(url, "full")


def test_a_rollout_runs_on_the_cluster_and_counts_each_feedback_once(service):
    """Both ingress replicas drive the rollout from the shared store, each adding only its own counts: the evidence
    is the feedback sent, not twice it (each replica's /metrics holds every replica's families)."""
    url, _ = service
    auth = {"authorization": f"Bearer {TOKEN}"}
    plan = {"steps": [50, 100], "min_feedback": 12, "accuracy_margin": 0.5, "max_latency_ratio": None}
    plan |= {"max_error_rate": 0.5}
    started = httpx.put(f"{url}/v1/rollouts/blockdrop", json=plan, headers=auth, timeout=30)
    assert started.status_code == 200, started.text
    sent = 0
    try:
        for round_ in range(200):
            for variant in ("blockdrop", "full"):
                served = classify(url, SAMPLES[round_ % len(SAMPLES)].read_bytes(), **{"X-Variant": variant}).json()
                label = served["prediction"]["class_id"]  # right every time: both arms at 100 %
                feedback = httpx.post(f"{url}/v1/feedback", json={"request_id": served["request_id"], "label": label})
                assert feedback.status_code == 200, feedback.text
                sent += variant == "blockdrop"
            rollout = httpx.get(f"{url}/v1/rollouts/blockdrop", timeout=30).json()
            if rollout["status"] != "running":
                break
        assert rollout["status"] == "completed", rollout
        assert [(e["action"], e["share"]) for e in rollout["history"]] == [("start", 50), ("complete", 100)]
        assert 12 <= rollout["evidence"]["variant"]["feedback"] <= sent
        wait_until(
            lambda: all(httpx.get(f"{url}/v1/variants/full").json()["weight"] == 0 for _ in range(6)), 10, "weights"
        )
    finally:  # as the other tests found it: the operator's weights back, on every ingress replica
        for name in ("blockdrop", "full"):
            httpx.put(f"{url}/v1/variants/{name}", json={"weight": 1.0}, headers=auth, timeout=30)
        wait_until(
            lambda: all(httpx.get(f"{url}/v1/variants/full").json()["weight"] == 1.0 for _ in range(8)), 20, "weights"
        )


def test_redeploying_with_a_new_threshold_and_weight_fails_no_request_and_keeps_stickiness(service):
    """One redeploy under load (each takes Ray ~45 s here) changes a threshold and triples `full`'s weight: no
    request fails, and stickiness holds as weighted rendezvous hashing promises (a heavier `full` only draws
    clients to itself: every client of `full` stays there; with the weights kept, nobody would move)."""
    url, chosen = service
    keys = [f"sticky-{i}" for i in range(200)]

    def assignment() -> dict[str, str]:
        body = SAMPLES[3].read_bytes()
        return {key: classify(url, body, **{"X-Client-Id": key}).json()["variant"] for key in keys}

    before = assignment()
    # the module's last test: the deployment it leaves behind is torn down, not restored
    with Load(url, threads=4, keys=keys) as load:
        deploy(settings(chosen.port, threshold=0.6, full_weight=3.0))
    assert load.results
    # none lost to the redeploy; on a machine busy with other tests (and with the replicas it starts) the ingress
    # may shed a request with 503 + Retry-After, as under any overload: that one says so
    assert [r for r in load.results if r[0] != 200 and not (r[0] == 503 and "overloaded" in r[1])] == []
    after = assignment()
    stayed = [key for key, variant in before.items() if variant == "full"]
    assert stayed and all(after[key] == "full" for key in stayed), "a client of `full` moved away from it"
    assert sum(v == "full" for v in after.values()) > max(len(stayed), sum(v == "blockdrop" for v in after.values()))
    answer = classify(url, SAMPLES[3].read_bytes(), **{"X-Variant": "blockdrop"}).json()
    assert answer["compute"]["threshold"] == 0.6


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_half_a_header_is_answered_408_at_the_header_timeout(service):
    """Ray sets HAProxy no time for the headers: it waited an hour (its client timeout) for the rest of one."""
    url, _ = service
    took, answer = exchange_until_closed(port(url), b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 ") and 1.5 < took < 15, (took, answer[:200])


def test_a_body_that_stalls_is_answered_408_at_the_body_timeout(service):
    """Ray's uvicorn waited for the rest of a body as long as HAProxy let the client take (an hour)."""
    url, _ = service
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    took, answer = exchange_until_closed(port(url), head + b"\0" * 1000)
    assert answer.startswith(b"HTTP/1.1 408 ") and 1.5 < took < 15, (took, answer[:200])
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request's body did not arrive within 2 s of its headers"
    }
    assert classify(url, SAMPLES[0].read_bytes()).status_code == 200


def test_an_answer_carries_its_request_id_once(service):
    """Ray's middleware adds the request's id to every answer, and the app echoed the same id: it came twice."""
    url, _ = service
    given = classify(url, SAMPLES[0].read_bytes(), **{"X-Request-ID": "trace-42"})
    assert given.headers.get_list("x-request-id") == ["trace-42"]
    made = classify(url, SAMPLES[0].read_bytes())
    assert len(made.headers.get_list("x-request-id")) == 1
    assert len(httpx.get(f"{url}/nope").headers.get_list("x-request-id")) == 1
    # an id the service does not take: Ray echoes it, and the service names the request with its own
    refused = classify(url, SAMPLES[0].read_bytes(), **{"X-Request-ID": "x" * 200})
    ids = refused.headers.get_list("x-request-id")
    assert len(ids) == 2 and "x" * 200 in ids
