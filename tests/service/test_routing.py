import random

import pytest

from service.errors import NotFound
from service.routing import Router, stable_unit_interval


def test_split_follows_the_weights_over_2000_client_keys():
    router = Router({"blockdrop": 3, "full": 1})
    counts = {"blockdrop": 0, "full": 0}
    for i in range(2000):
        counts[router.choose(client_key=f"client-{i}")] += 1
    # binomial(2000, 0.75): sd = 19.4; 4 sd either side
    assert abs(counts["blockdrop"] - 1500) < 78


def test_sticky_keys_survive_a_restart():
    before = Router({"a": 1, "b": 1, "c": 2})
    after = Router({"a": 1, "b": 1, "c": 2}, rng=random.Random(99))  # a new process: other random state
    keys = [f"user-{i}" for i in range(500)]
    assert [before.choose(client_key=k) for k in keys] == [after.choose(client_key=k) for k in keys]
    assert stable_unit_interval("user-1") == stable_unit_interval("user-1")


def test_override_wins_and_unknown_names_are_404():
    router = Router({"a": 1, "b": 0})
    assert router.choose(override="b", client_key="anything") == "b"
    assert {router.choose() for _ in range(50)} == {"a"}  # zero weight: only reachable by override
    with pytest.raises(NotFound, match="unknown variant 'x'"):
        router.choose(override="x")


def test_shadow_sampling():
    router = Router({"a": 1, "b": 1}, shadow_variant="b", shadow_fraction=0.25, rng=random.Random(0))
    shadowed = sum(router.shadow_for("a") == "b" for _ in range(4000))
    assert abs(shadowed - 1000) < 110
    assert router.shadow_for("b") is None  # never shadow a variant with itself
    assert Router({"a": 1}).shadow_for("a") is None


def test_ramping_a_variant_moves_only_the_keys_that_must_move():
    """10 % -> 20 % for 'new': it keeps its first keys and takes the others' from both; nobody moves between the
    old variants. Ramping back returns exactly the same keys."""
    keys = [f"user-{i}" for i in range(4000)]
    router = Router({"new": 10, "a": 45, "b": 45})
    before = {k: router.choose(client_key=k) for k in keys}
    router.set_weights({"new": 20, "a": 40, "b": 40})
    after = {k: router.choose(client_key=k) for k in keys}
    assert all(after[k] == "new" for k in keys if before[k] == "new")
    assert all(after[k] == before[k] for k in keys if after[k] != "new")
    share = sum(v == "new" for v in after.values()) / len(keys)
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / len(keys)) ** 0.5
    router.set_weights({"new": 10, "a": 45, "b": 45})
    assert {k: router.choose(client_key=k) for k in keys} == before


def test_weights_must_leave_a_routable_variant():
    with pytest.raises(ValueError, match="positive weight"):
        Router({"a": 1}).set_weights({"a": 0})
