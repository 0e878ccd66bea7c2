"""Checkpoints as the store writes them, and the writer a pool actor uses to store its sessions' ones itself.

A checkpoint is a row of the store's ``checkpoints`` table; one over 1 MiB is a file of its own under
``state_dir/checkpoints`` (written to a temporary name, fsynced, renamed, its folder fsynced) and the row
holds its path. A replaced checkpoint's file is deleted only after the row that replaces it has committed,
so a crash at any point leaves the old checkpoint or the new one, whole.

``LocalCheckpoints`` is why this is a module of its own: an actor on the coordinator's node writes its
sessions' checkpoints straight into the store's SQLite file (WAL lets processes of one machine write it in
turn, each commit fsynced), instead of a round trip through the coordinator. A session call then costs one
local commit more than a plain call, and keeps answering while the coordinator restarts. An actor on any
other node (its ``state_dir`` is another machine's folder, or shared storage, where SQLite's locks cannot be
trusted) has none and goes through the coordinator.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("orchestrator.checkpoints")

INLINE_LIMIT = 1 << 20  # checkpoints above 1 MiB go to a file
STORE_FILE = "orchestrator.db"
STORE_ID_ENV = "ORCHESTRATOR_STORE_ID"  # set in every pool actor's environment by the supervisor
STORE_NODE_ENV = "ORCHESTRATOR_STORE_NODE"  # the Ray node the store's coordinator runs on

Row = tuple[str, bytes, str | None, float]


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection to the store (autocommit: transactions are explicit, see :func:`transaction`)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction holding the write lock from its start (``BEGIN IMMEDIATE``): another process that
    writes the store between this one's read and its write cannot make it fail half-way."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def checkpoint_row(state_dir: Path, key: str, blob: bytes, now: float) -> Row:
    """A checkpoints row; a large blob is written to a new file of its own first (durably: never half a
    checkpoint, and the one it replaces stays whole until the row pointing at this one has committed)."""
    if len(blob) <= INLINE_LIMIT:
        return (key, blob, None, now)
    folder = state_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    file = folder / f"{hashlib.sha256(key.encode()).hexdigest()}-{time.time_ns()}"
    write_durably(file, blob)
    return (key, b"", str(file), now)


def upsert(db: sqlite3.Connection, rows: list[Row]) -> list[str]:
    """Insert or replace checkpoint rows (in the caller's transaction); the files of the ones replaced."""
    stale = []
    for key, _, path, _ in rows:
        old = db.execute("SELECT path FROM checkpoints WHERE key=?", (key,)).fetchone()
        if old and old[0] and old[0] != path:
            stale.append(old[0])
    db.executemany("INSERT OR REPLACE INTO checkpoints (key, blob, path, updated) VALUES (?, ?, ?, ?)", rows)
    return stale


def put_checkpoint(db: sqlite3.Connection, state_dir: Path, key: str, blob: bytes) -> None:
    """Save (replace) one checkpoint in its own transaction; durable when this returns on a FULL connection."""
    row = checkpoint_row(state_dir, key, blob, time.time())
    try:
        with transaction(db):
            stale = upsert(db, [row])
    except BaseException:
        unlink([row[2]] if row[2] else [])  # the file of a checkpoint never stored
        raise
    unlink(stale)


def unlink(paths: list[str]) -> None:
    """Delete replaced checkpoints' files (after the commit that replaced them)."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def write_durably(file: Path, blob: bytes) -> None:
    """Write to a temporary name, fsync, rename over ``file``, fsync the folder."""
    tmp = file.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(blob)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(file)
    folder = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class LocalCheckpoints:
    """A pool actor's own writer of its sessions' checkpoints into the store (see the module's docstring)."""

    def __init__(self, db: sqlite3.Connection, state_dir: Path) -> None:
        self.db, self.dir = db, state_dir
        self.lock = threading.Lock()  # one connection, the actor's op threads in turn

    @classmethod
    def open(cls, state_dir: Path, store_id: str | None, store_node: str | None, node: str) -> LocalCheckpoints | None:
        """The writer, when this actor runs on the store's node and the file there is that store (its id);
        else None (with the reason logged): the actor then stores checkpoints through the coordinator."""
        path = state_dir / STORE_FILE
        if not store_id or store_node != node:
            log.info("session checkpoints through the coordinator: its store is on node %s, not %s", store_node, node)
            return None
        if not path.is_file():
            log.warning("session checkpoints through the coordinator: no store at %s", path)
            return None
        try:
            db = connect(path, "FULL")
            row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        except sqlite3.Error as exc:
            log.warning("session checkpoints through the coordinator: %s cannot be opened (%s)", path, exc)
            return None
        if row is None or row[0] != store_id:
            db.close()
            log.warning("session checkpoints through the coordinator: %s is store %s, not %s", path, row, store_id)
            return None
        return cls(db, state_dir)

    def put(self, key: str, blob: bytes) -> None:
        """Store a checkpoint; it is on disk (fsynced) when this returns. Raises ``sqlite3.Error``."""
        with self.lock:
            put_checkpoint(self.db, self.dir, key, blob)
