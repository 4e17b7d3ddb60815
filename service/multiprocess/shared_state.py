"""What every API server of one service must see alike, in one SQLite file in the runtime folder (tmpfs): the
predictions awaiting feedback (feedback for an image one API server answered may reach any other) and the
operators' changes (a change made through one API server reaches the others at their next poll).

SQLite serialises the writers of several processes; WAL lets readers go on meanwhile; nothing here must survive
the service (the runtime folder goes with it), so nothing is synced to disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from service.feedback import ServedPrediction

BUSY_TIMEOUT_MS = 2000
EVICT_EVERY = 1024  # predictions remembered between two evictions


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def create(path: Path) -> None:
    """Make the tables (the supervisor, before any API server starts)."""
    with connect(path) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS predictions (request_id TEXT PRIMARY KEY, variant TEXT NOT NULL, "
            "class_id INTEGER NOT NULL, served_at REAL NOT NULL)"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS changes (version INTEGER PRIMARY KEY, variant TEXT, change TEXT)"
        )


class SharedPredictionStore:
    """``service.dataplane.Store`` over the shared file, bounded in count and age like ``PredictionStore``.

    Predictions are written behind, every ``flush_every_s`` from a batch kept here (one transaction instead of one
    per request, which under load cost the event loop a lock shared with every other API server). So a claim that
    finds nothing looks in this process's batch, then once more in the file after a flush interval: by then every
    API server has written what it served before the claim arrived.
    """

    def __init__(self, path: Path, capacity: int, ttl_s: float, clock=time.time, flush_every_s: float = 0.05):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.flush_every_s = flush_every_s
        self._clock = clock
        self._connection = connect(path)
        self._unwritten: list[tuple[str, str, int, float]] = []
        self._since_eviction = 0
        self._flusher: asyncio.TimerHandle | None = None

    async def remember(self, entries: list[tuple[str, str, int]]) -> None:
        now = self._clock()
        self._unwritten += [(*entry, now) for entry in entries]
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(self.flush_every_s, self.flush)

    def flush(self) -> None:
        """Write the predictions kept here (and now and then drop the expired and the oldest over capacity)."""
        self._flusher = None
        entries, self._unwritten = self._unwritten, []
        if not entries:
            return
        with self._connection as connection:
            connection.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?)", entries)
        self._since_eviction += len(entries)
        if self._since_eviction >= EVICT_EVERY:
            self._since_eviction = 0
            self._evict()

    async def claim(self, request_id: str) -> ServedPrediction | None:
        served = self._take_unwritten(request_id) or self._take_written(request_id)
        if served is None:  # perhaps another API server has not written it yet
            await asyncio.sleep(self.flush_every_s * 2)
            served = self._take_written(request_id)
        if served is None or served.served_at <= self._clock() - self.ttl_s:
            return None
        return served

    def _take_unwritten(self, request_id: str) -> ServedPrediction | None:
        for i, (kept_id, variant, class_id, served_at) in enumerate(self._unwritten):
            if kept_id == request_id:
                del self._unwritten[i]
                return ServedPrediction(variant, class_id, served_at)
        return None

    def _take_written(self, request_id: str) -> ServedPrediction | None:
        row = self._connection.execute(
            "DELETE FROM predictions WHERE request_id = ? RETURNING variant, class_id, served_at", (request_id,)
        ).fetchone()
        return None if row is None else ServedPrediction(*row)

    def _evict(self) -> None:
        with self._connection as connection:
            connection.execute("DELETE FROM predictions WHERE served_at <= ?", (self._clock() - self.ttl_s,))
            connection.execute(
                "DELETE FROM predictions WHERE rowid <= (SELECT max(rowid) FROM predictions) - ?", (self.capacity,)
            )


class SharedChanges:
    """Operator changes (threshold, weight per variant) in the order they were made."""

    def __init__(self, path: Path):
        self._connection = connect(path)

    def publish(self, variant: str, change: dict[str, float]) -> None:
        with self._connection as connection:
            connection.execute("INSERT INTO changes (variant, change) VALUES (?, ?)", (variant, json.dumps(change)))

    def version(self) -> int:
        return self._connection.execute("SELECT coalesce(max(version), 0) FROM changes").fetchone()[0]

    def current(self) -> dict[str, dict[str, float]]:
        """Every variant's latest value of each setting changed so far."""
        latest: dict[str, dict[str, float]] = {}
        for variant, change in self._connection.execute("SELECT variant, change FROM changes ORDER BY version"):
            latest.setdefault(variant, {}).update(json.loads(change))
        return latest
