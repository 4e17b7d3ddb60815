"""Where rollouts live: one SQLite file in the state directory (``Settings.state_dir``), a row per variant holding
its rollout as JSON.

Why SQLite: it is in the standard library, needs no server, and gives atomic read-modify-write transactions
between processes on one machine (``BEGIN IMMEDIATE`` takes the file's write lock), so several API server
processes can each add their own evidence and make decisions without losing one another's updates; a file that is
replaced atomically (write, then ``os.replace``) survives crashes too but would need a lock of its own for that.
The file is created on the first write, so a service that never starts a rollout writes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

FILENAME = "rollouts.sqlite3"
SCHEMA = "CREATE TABLE IF NOT EXISTS rollouts (variant TEXT PRIMARY KEY, state TEXT NOT NULL)"

Rollout = dict[str, Any]


class RolloutStore:
    def __init__(self, state_dir: Path, timeout_s: float = 5.0):
        self.path = Path(state_dir) / FILENAME
        self.timeout_s = timeout_s

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        connection.execute(SCHEMA)
        return connection

    def all(self) -> list[Rollout]:
        """Every rollout, by variant name."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as db:
            return [json.loads(state) for (state,) in db.execute("SELECT state FROM rollouts ORDER BY variant")]

    def get(self, variant: str) -> Rollout | None:
        if not self.path.exists():
            return None
        with closing(self._connect()) as db:
            row = db.execute("SELECT state FROM rollouts WHERE variant = ?", (variant,)).fetchone()
        return None if row is None else json.loads(row[0])

    def update(self, variant: str, change: Callable[[Rollout | None], Rollout | None]) -> Rollout | None:
        """Read ``variant``'s rollout, pass it to ``change`` and store what it returns (``None``: leave the row as
        it was), in one transaction that no other process can interleave with. An exception in ``change`` rolls
        the transaction back and is raised here."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT state FROM rollouts WHERE variant = ?", (variant,)).fetchone()
                new = change(None if row is None else json.loads(row[0]))
                if new is not None:
                    db.execute(
                        "INSERT INTO rollouts (variant, state) VALUES (?, ?) "
                        "ON CONFLICT(variant) DO UPDATE SET state = excluded.state",
                        (variant, json.dumps(new)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return new
