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


def test_masks_survive_hex_and_a_malformed_one_is_refused():
    import pytest
    import torch

    from models.signatures import format_counted_masks, mask_to_hex, masks_from_hex, parse_counted_masks

    for blocks in (1, 3, 4, 15, 54):
        masks = torch.rand(20, blocks, generator=torch.Generator().manual_seed(blocks)) < 0.5
        texts = [mask_to_hex(row) for row in masks]
        assert all(len(text) == -(-blocks // 4) for text in texts)
        assert torch.equal(masks_from_hex(texts, blocks), masks)
    assert mask_to_hex(torch.tensor([True, False, True, True, True])) == "b8"  # block 0 is the first bit
    parsed, counts = parse_counted_masks(format_counted_masks([("b8", 7), ("08", 2)]), 5)
    assert parsed.tolist() == [[True, False, True, True, True], [False, False, False, False, True]] and counts == [7, 2]
    with pytest.raises(ValueError, match="2 hex digits"):
        masks_from_hex(["b"], 5)
    with pytest.raises(ValueError, match="past the 5"):
        masks_from_hex(["bc"], 5)  # bit 6 set
    with pytest.raises(ValueError, match="HEX:COUNT"):
        parse_counted_masks("b8:7 08", 5)


def test_prefilled_signatures_are_counted_as_seen_twice_and_give_way_to_commoner_ones():
    cache: SignatureCache[str] = SignatureCache(2)
    assert cache.prefill(("a",), "graph a") and cache.prefill(("b",), "graph b")
    assert not cache.prefill(("c",), "graph c") and len(cache) == 2  # full: the rest are learnt while serving
    assert _serve(cache, ["a", "c", "c"]) == []  # a hit from the first request; 'c' seen twice is not more than 'b'
    assert (cache.lookups, cache.hits) == (3, 1)
    assert _serve(cache, ["c"]) == ["c"] and ("b",) not in cache and ("a",) in cache  # three sightings beat two
