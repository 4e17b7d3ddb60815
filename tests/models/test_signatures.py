"""The signature cache's admission: by how often a signature comes back, bounded, and counting its hits."""

from __future__ import annotations

from models.signatures import SignatureCache


def _serve(cache: SignatureCache, keys: list[str]) -> list[str]:
    """Look each key up as the engine does, keeping a 'graph' whenever the cache wants one; the keys captured."""
    captured = []
    for key in keys:
        if cache.get((key,)) is None and cache.wants((key,)):
            cache.put((key,), f"graph {key}")
            captured.append(key)
    return captured


def test_a_signature_is_kept_from_its_second_sighting_while_there_is_room():
    cache: SignatureCache[str] = SignatureCache(2)
    assert _serve(cache, ["a", "b", "a", "c", "b", "a"]) == ["a", "b"]
    assert cache.get(("a",)) == "graph a" and ("c",) not in cache and len(cache) == 2
    assert (cache.lookups, cache.hits) == (7, 2) and cache.hit_rate == 2 / 7


def test_a_passing_signature_does_not_push_out_a_common_one():
    cache: SignatureCache[str] = SignatureCache(2)
    _serve(cache, ["a"] * 5 + ["b"] * 3)
    # least recently used would have dropped 'a' for each of these, seen twice each
    assert _serve(cache, ["c", "c", "d", "d", "e", "e"]) == []
    assert ("a",) in cache and ("b",) in cache
    # one seen more often than a kept one takes the place of the least seen
    assert _serve(cache, ["f"] * 4) == ["f"]
    assert ("a",) in cache and ("f",) in cache and ("b",) not in cache


def test_counts_are_bounded_and_halved_so_that_a_new_mix_takes_over():
    cache: SignatureCache[str] = SignatureCache(1)
    _serve(cache, ["a"] * 8)
    assert ("a",) in cache
    _serve(cache, [f"once {i}" for i in range(100)])  # the 101st distinct signature halves every count
    assert len(cache._seen) <= 101 and cache._seen[("a",)] == 4 and ("a",) in cache
    assert _serve(cache, ["b"] * 5) == ["b"] and ("a",) not in cache  # 5 > 4: the new common signature


def test_a_cache_of_no_entries_keeps_nothing_and_a_smaller_one_drops_the_least_seen():
    off: SignatureCache[str] = SignatureCache(0)
    assert _serve(off, ["a", "a", "a"]) == [] and len(off) == 0
    cache: SignatureCache[str] = SignatureCache(3)
    _serve(cache, ["a"] * 4 + ["b"] * 2 + ["c"] * 3)
    cache.resize(2)
    assert ("b",) not in cache and len(cache) == 2 and cache.capacity == 2
    cache.clear()
    assert len(cache) == 0 and not cache.wants(("a",))
