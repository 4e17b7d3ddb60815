"""The heap keeper: glibc's free bytes read through mallinfo2, and a trim whenever more has been freed since the
last one (trimmed pages still count as free, so the same pages do not trigger it again)."""

from __future__ import annotations

import asyncio

import pytest

from service import heap_keeper
from service.libc import free_heap_bytes, release_free_memory

MIB = 1024 * 1024


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_freed_chunks_show_as_free_heap_and_a_trim_hands_them_back():
    if free_heap_bytes() is None:
        pytest.skip("no mallinfo2 in this C library")
    kept, freed = [], []
    for _ in range(1000):  # 60 kB each: below glibc's mmap threshold, so from the heap
        kept.append(b"k" * 60_000)
        freed.append(b"f" * 60_000)
    before = free_heap_bytes()
    resident = _resident_bytes()
    del freed
    assert free_heap_bytes() - before > 40 * MIB
    release_free_memory()
    assert resident - _resident_bytes() > 30 * MIB
    assert len(kept) == 1000


def test_the_keeper_trims_once_for_each_32_mib_freed_since_its_last_trim(monkeypatch):
    # MiB free at each reading: a check, and after each trim a second reading (None: no mallinfo2, the keeper stops)
    free = iter([10, 50, 50, 60, 100, 100, 20, 40, 70, 70, None])
    seen: list[int | None] = []
    trims: list[int] = []

    def reading() -> int | None:
        value = next(free)
        seen.append(value)
        return None if value is None else value * MIB

    monkeypatch.setattr(heap_keeper, "free_heap_bytes", reading)
    monkeypatch.setattr(heap_keeper, "release_free_memory", lambda: trims.append(seen[-1]))
    asyncio.run(heap_keeper.keep_heap_trimmed(interval_s=0.001, above_bytes=32 * MIB))
    # 50: trim (50 freed) · 60: 10 more, no · 100: trim (50 more) · 20: reused · 40: 20 more, no · 70: trim (50)
    assert trims == [50, 100, 70]
