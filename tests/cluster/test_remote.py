"""The ingress's view of a variant's Ray deployment, with a stand-in for the deployment's handle (no cluster)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from service.cluster.remote import RemoteVariant
from service.metrics import ServiceMetrics


def test_a_ping_says_the_replica_is_alive_and_whether_it_runs_cuda_graphs():
    answers: list = [{"cuda_graphs": True}, {"cuda_graphs": False}, TimeoutError("no replica answered")]

    async def ping() -> dict:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    handle = SimpleNamespace(ping=SimpleNamespace(remote=ping))
    remote = RemoteVariant("v", handle, ServiceMetrics(), full_flops=1, retry_after_s=1)
    assert remote.graphs_in_use is None and not remote.alive  # nothing heard yet: /v1/models shows the setting
    assert asyncio.run(remote.ping(1.0)) and remote.graphs_in_use is True
    assert asyncio.run(remote.ping(1.0)) and remote.graphs_in_use is False  # e.g. a replacement whose capture failed
    assert not asyncio.run(remote.ping(1.0)) and not remote.alive and remote.graphs_in_use is False  # last heard
