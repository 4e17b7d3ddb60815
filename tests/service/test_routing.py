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
