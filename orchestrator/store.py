"""The durable store: SQLite (WAL) in ``state_dir``.

One small interface over one file: session records and checkpoints. Large
checkpoints go to files under ``state_dir/checkpoints`` with only their path in
the database. The schema carries a version and is created on first use.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
INLINE_LIMIT = 1 << 20  # checkpoints above 1 MiB go to a file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, pool TEXT NOT NULL, slot INTEGER NOT NULL,
    created REAL NOT NULL, ttl_s REAL, closed REAL, close_reason TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY, blob BLOB, path TEXT, updated REAL NOT NULL
);
"""


class Store:
    """Session records and checkpoints in one SQLite database."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.dir / "orchestrator.db", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.dir}: store schema {row[0]} is newer than this orchestrator ({SCHEMA_VERSION})")

    def put_checkpoint(self, key: str, blob: bytes) -> None:
        """Save (replace) a checkpoint."""
        path = None
        if len(blob) > INLINE_LIMIT:
            folder = self.dir / "checkpoints"
            folder.mkdir(exist_ok=True)
            file = folder / hashlib.sha256(key.encode()).hexdigest()
            tmp = file.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(file)  # atomic: a crash never leaves half a checkpoint
            path, blob = str(file), b""
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO checkpoints (key, blob, path, updated) VALUES (?, ?, ?, ?)",
                (key, blob, path, time.time()),
            )

    def get_checkpoint(self, key: str) -> bytes | None:
        """The last checkpoint under ``key``, or None."""
        with self.lock:
            row = self.db.execute("SELECT blob, path FROM checkpoints WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return Path(row[1]).read_bytes() if row[1] else bytes(row[0])

    def delete_checkpoint(self, key: str) -> None:
        """Forget a checkpoint (and its file)."""
        with self.lock:
            row = self.db.execute("SELECT path FROM checkpoints WHERE key=?", (key,)).fetchone()
            self.db.execute("DELETE FROM checkpoints WHERE key=?", (key,))
        if row and row[0]:
            Path(row[0]).unlink(missing_ok=True)

    def put_session(self, record: dict[str, Any]) -> None:
        """Record an open session."""
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO sessions (id, pool, slot, created, ttl_s) VALUES (?, ?, ?, ?, ?)",
                (record["id"], record["pool"], record["slot"], record["created"], record.get("ttl_s")),
            )

    def close_session(self, session_id: str, reason: str) -> None:
        """Mark a session closed, with why."""
        with self.lock:
            self.db.execute(
                "UPDATE sessions SET closed=?, close_reason=? WHERE id=?", (time.time(), reason, session_id)
            )

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()
