"""What every API server of one service must see alike, in one SQLite file in the runtime folder (tmpfs): the
predictions awaiting feedback (feedback for an image one API server answered may reach any other) and the
operators' changes (a change made through one API server reaches the others at their next poll).

SQLite serialises the writers of several processes; WAL lets readers go on meanwhile; nothing here must survive
the service (the runtime folder goes with it), so nothing is synced to disk.
"""

from __future__ import annotations

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
    """``service.dataplane.Store`` over the shared file, bounded in count and age like ``PredictionStore``."""

    def __init__(self, path: Path, capacity: int, ttl_s: float, clock=time.time):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._connection = connect(path)
        self._since_eviction = 0

    async def remember(self, entries: list[tuple[str, str, int]]) -> None:
        now = self._clock()
        with self._connection as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?)", [(*entry, now) for entry in entries]
            )
        self._since_eviction += len(entries)
        if self._since_eviction >= EVICT_EVERY:
            self._since_eviction = 0
            self._evict()

    async def claim(self, request_id: str) -> ServedPrediction | None:
        cutoff = self._clock() - self.ttl_s
        row = self._connection.execute(
            "DELETE FROM predictions WHERE request_id = ? RETURNING variant, class_id, served_at", (request_id,)
        ).fetchone()
        if row is None or row[2] <= cutoff:
            return None
        return ServedPrediction(*row)

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
