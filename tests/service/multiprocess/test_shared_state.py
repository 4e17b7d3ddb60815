"""The state every API server shares: predictions awaiting feedback, operators' changes, the frames and memory
between an API server and a model server."""

from __future__ import annotations

import asyncio
import math

import torch

from service.multiprocess import frames
from service.multiprocess.frames import Reply, SlotRegion, SlotShape
from service.multiprocess.shared_state import SharedChanges, SharedPredictionStore, create


def test_a_prediction_takes_feedback_once_from_any_process(tmp_path):
    path = tmp_path / "shared.sqlite"
    create(path)
    one, other = SharedPredictionStore(path, 100, 60.0), SharedPredictionStore(path, 100, 60.0)

    async def scenario() -> None:
        await one.remember([("a", "blockdrop", 3), ("b", "full", 5)])  # written within a flush interval
        served = await other.claim("a")  # before that: it looks again once the interval has passed
        assert (served.variant, served.class_id) == ("blockdrop", 3)
        assert await one.claim("a") is None  # taken
        assert await one.claim("unknown") is None
        assert (await one.claim("b")).class_id == 5

    asyncio.run(scenario())


def test_predictions_expire_and_are_bounded_in_count(tmp_path, monkeypatch):
    path = tmp_path / "shared.sqlite"
    create(path)
    now = [1000.0]
    store = SharedPredictionStore(path, capacity=10, ttl_s=5.0, clock=lambda: now[0])
    asyncio.run(store.remember([("old", "full", 1)]))
    store.flush()
    now[0] += 6.0
    assert asyncio.run(store.claim("old")) is None  # past its TTL
    monkeypatch.setattr("service.multiprocess.shared_state.EVICT_EVERY", 5)
    asyncio.run(store.remember([(f"r{i}", "full", i) for i in range(30)]))
    store.flush()
    count = store._connection.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert count <= 10
    assert asyncio.run(store.claim("r29")) is not None  # the newest stay


def test_changes_are_seen_in_order_by_every_process(tmp_path):
    path = tmp_path / "shared.sqlite"
    create(path)
    one, other = SharedChanges(path), SharedChanges(path)
    assert other.version() == 0 and other.current() == {}
    one.publish("full", {"weight": 0.0})
    one.publish("blockdrop", {"threshold": 0.4})
    one.publish("full", {"weight": 2.0})
    assert other.version() == 3
    assert other.current() == {"full": {"weight": 2.0}, "blockdrop": {"threshold": 0.4}}


def test_request_frames_carry_the_variants_own_threshold_as_none():
    assert frames.decode_request(frames.encode_request(7, 2, 123.5, None, 100.0)) == (7, 2, 123.5, None, 100.0)
    assert frames.decode_request(frames.encode_request(0, 0, 1.0, 0.25, 0.5)) == (0, 0, 1.0, 0.25, 0.5)
    reply = Reply(3, 503, 1, 0, 0.0, 0.0, "overloaded")
    head = frames.REPLY.unpack_from(reply.encode())
    assert head == (3, 503, 1, 0, 0.0, 0.0, len("overloaded"))
    assert reply.encode()[frames.REPLY.size :] == b"overloaded"


def test_slots_written_by_one_mapping_are_read_by_another(tmp_path):
    shape = SlotShape(slots=4, image=(3, 8, 8), classes=10, blocks=5)
    writer = SlotRegion(tmp_path / "slots", shape, create=True)
    reader = SlotRegion(tmp_path / "slots", shape)
    image = torch.rand(3, 8, 8)
    writer.images[2].copy_(image)
    reader.logits[2] = torch.arange(10.0)
    reader.keep_mask[2] = torch.tensor([True, False, True, True, False])
    reader.flops[2] = 12345
    assert torch.equal(reader.images[2], image)
    assert torch.equal(writer.logits[2], torch.arange(10.0)) and int(writer.flops[2]) == 12345
    assert writer.keep_mask[2].tolist() == [True, False, True, True, False]
    status = frames.status_block(tmp_path / "status", create=True)
    frames.status_block(tmp_path / "status")[frames.HEARTBEAT] = 5.0
    assert status[frames.HEARTBEAT] == 5.0 and not math.isnan(status[frames.READY])
