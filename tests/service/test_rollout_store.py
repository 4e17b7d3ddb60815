"""The rollout store: a SQLite file that several processes update without losing one another's changes."""

from __future__ import annotations

import multiprocessing

import pytest

from service.errors import Conflict
from service.rollout_store import RolloutStore


def test_reading_creates_nothing_and_writing_round_trips(tmp_path):
    store = RolloutStore(tmp_path / "state")
    assert store.all() == [] and store.get("dyn") is None
    assert not (tmp_path / "state").exists()
    store.update("dyn", lambda current: {"variant": "dyn", "step": 0} if current is None else None)
    assert RolloutStore(tmp_path / "state").get("dyn") == {"variant": "dyn", "step": 0}  # another reader sees it


def test_a_failed_change_leaves_the_row_as_it_was(tmp_path):
    store = RolloutStore(tmp_path)
    store.update("dyn", lambda _: {"step": 1})

    def refuse(current):
        raise Conflict("no")

    with pytest.raises(Conflict):
        store.update("dyn", refuse)
    assert store.get("dyn") == {"step": 1}


def _add(path: str, times: int) -> None:
    store = RolloutStore(path)
    for _ in range(times):
        store.update("dyn", lambda current: {"count": (current or {"count": 0})["count"] + 1})


def test_updates_from_several_processes_are_not_lost(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add, args=(str(tmp_path), 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert RolloutStore(tmp_path).get("dyn") == {"count": 100}
