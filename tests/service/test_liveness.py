"""Liveness: 200 on every health route, unless the backend has a reason for the service to be restarted (with
several API servers: their supervisor stopped watching; tests/service/multiprocess covers that end to end), and
never while the service drains."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fastapi.testclient import TestClient

from service.api.grpc_v2 import InferenceServicer
from service.app import create_app
from service.local_backend import LocalBackend
from tests.service.conftest import make_settings


class _Backend(LocalBackend):
    reason: str | None = None

    def liveness_problem(self) -> str | None:
        return self.reason


def test_a_backends_reason_fails_liveness_on_every_protocol_but_not_while_draining(artifacts):
    settings = make_settings(artifacts)
    backend = _Backend(settings)
    with TestClient(create_app(settings, backend=backend)) as client:
        plane = client.app.state.plane
        servicer = InferenceServicer(plane, plane.metrics)
        context = SimpleNamespace(set_trailing_metadata=lambda metadata: None)

        def grpc_live() -> bool:
            return asyncio.run(servicer.ServerLive(None, context)).live

        assert client.get("/healthz/live").json() == {"status": "live"}
        assert client.get("/v2/health/live").json() == {"live": True} and grpc_live()

        backend.reason = "the supervisor has not watched the service's processes for 12 s"
        answer = client.get("/healthz/live")
        assert answer.status_code == 503 and answer.json() == {"error": f"not live: {backend.reason}"}
        answer = client.get("/v2/health/live")
        assert answer.status_code == 503 and answer.json() == {"live": False} and not grpc_live()
        assert client.get("/healthz/ready").status_code == 200  # serving goes on: readiness is another question

        plane.stopping = True  # draining on purpose is no fault
        assert client.get("/healthz/live").status_code == 200 and grpc_live()
