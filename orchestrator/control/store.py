"""The durable store: SQLite (WAL) in ``state_dir``.

One small interface over one file: session records, checkpoints, jobs and
their event logs, uploaded files, program versions. Large checkpoints go to files under
``state_dir/checkpoints`` and uploaded files to ``state_dir/files/<id>``, with
only their path in the database. The schema (``tables.py``) carries a version and is
created on first use.

Job records and events are read on a third connection, so readers never wait for a commit's fsync.
Pool actors on the coordinator's machine write their sessions' checkpoints into the same file
(``checkpoints.py``): every transaction that reads before it writes takes the write lock at its start.

Durability: session and job records and checkpoints are fsynced as they
commit (WAL with ``synchronous=FULL``), and a checkpoint or uploaded file is written
to a temporary name, fsynced, renamed and its folder fsynced: what a call reported
as stored survives a crash of the process and of the machine. Job events are
appended on a second connection with ``synchronous=NORMAL``: committed (so a
process crash loses none) but fsynced with the next record or checkpoint
commit (the WAL is one sequential file). A machine crash can thus lose events
logged after the job's last checkpoint, which its re-run then logs again under
the same numbers. The store is thread-safe (one lock): the coordinator runs
its writes on a worker thread, off its event loop.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator.checkpoints import (
    STORE_FILE,
    checkpoint_row,
    connect,
    put_checkpoint,
    transaction,
    unlink,
    upsert,
    write_durably,
)
from orchestrator.control.tables import SCHEMA, SCHEMA_VERSION
from orchestrator.types import job_key

ACTIVE = ("queued", "running", "retrying")  # a job's statuses before it finishes


class Store:
    """Session records and checkpoints in one SQLite database."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = connect(self.dir / STORE_FILE, "FULL")
        self.db.executescript(SCHEMA)
        self.events_db = connect(self.dir / STORE_FILE, "NORMAL")
        # Jobs and their events are read on a connection of their own: WAL lets a reader go on while a
        # group commit is syncing, so job readers never wait for the writer's fsync.
        self.read_lock = threading.Lock()
        self.reader = connect(self.dir / STORE_FILE, "NORMAL")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.dir}: store schema {row[0]} is newer than this orchestrator ({SCHEMA_VERSION})")
        else:  # older schemas only lack tables, which the script above just created
            if int(row[0]) < 5:  # job_counts starts from one count of the jobs already there
                self.db.execute("DELETE FROM job_counts")
                self.db.execute("INSERT INTO job_counts SELECT pool, status, COUNT(*) FROM jobs GROUP BY pool, status")
            self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        # The store's identity: a pool actor writing checkpoints into this file itself checks it is this store.
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
        self.id: str = self.db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0]

    def put_checkpoint(self, key: str, blob: bytes) -> None:
        """Save (replace) a checkpoint (pool actors on this machine may write them too: see checkpoints.py)."""
        with self.lock:
            put_checkpoint(self.db, self.dir, key, blob)

    def get_checkpoint(self, key: str) -> bytes | None:
        """The last checkpoint under ``key``, or None."""
        with self.lock:
            row = self.db.execute("SELECT blob, path FROM checkpoints WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return Path(row[1]).read_bytes() if row[1] else bytes(row[0])

    def delete_checkpoint(self, key: str) -> None:
        """Forget a checkpoint (and its file)."""
        with self.lock, transaction(self.db):
            row = self.db.execute("SELECT path FROM checkpoints WHERE key=?", (key,)).fetchone()
            self.db.execute("DELETE FROM checkpoints WHERE key=?", (key,))
        if row and row[0]:
            Path(row[0]).unlink(missing_ok=True)

    def quarantine_checkpoint(self, key: str) -> None:
        """Move a checkpoint that cannot be loaded aside (kept for inspection under ``quarantine:<key>``)."""
        with self.lock, transaction(self.db):
            self.db.execute("DELETE FROM checkpoints WHERE key=?", (f"quarantine:{key}",))
            self.db.execute("UPDATE checkpoints SET key=? WHERE key=?", (f"quarantine:{key}", key))

    def remember_call(self, pool: str, key: str, op: str, args: dict[str, Any]) -> None:
        """Keep a pool-wide call for actors that start later (replacing the one of the same key)."""
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO pool_calls (pool, key, op, args, updated) VALUES (?, ?, ?, ?, ?)",
                (pool, key, op, pickle.dumps(args), time.time()),
            )

    def forget_call(self, pool: str, key: str) -> None:
        """Drop a remembered pool-wide call."""
        with self.lock:
            self.db.execute("DELETE FROM pool_calls WHERE pool=? AND key=?", (pool, key))

    def remembered_calls(self, pool: str) -> list[tuple[str, str, dict[str, Any]]]:
        """A pool's remembered calls as ``(key, op, args)``, oldest first (the order to replay them in)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT key, op, args FROM pool_calls WHERE pool=? ORDER BY updated, key", (pool,)
            ).fetchall()
        return [(key, op, pickle.loads(args)) for key, op, args in rows]

    def next_program_version(self, name: str) -> int:
        """The number the next version of program ``name`` gets (1 for a new program)."""
        with self.lock:
            row = self.db.execute("SELECT MAX(version) FROM programs WHERE name=?", (name,)).fetchone()
        return int(row[0] or 0) + 1

    def add_program_version(self, name: str, version: int, record: dict[str, Any], live: bool) -> None:
        """Store an immutable program version (and make it live, in the same commit, when ``live``)."""
        with self.lock, transaction(self.db):  # autocommit connection: one explicit transaction for both rows
            self.db.execute(
                "INSERT INTO programs (name, version, record, created) VALUES (?, ?, ?, ?)",
                (name, version, json.dumps(record), time.time()),
            )
            if live:
                self.db.execute("INSERT OR REPLACE INTO program_live (name, version) VALUES (?, ?)", (name, version))

    def set_live_program(self, name: str, version: int) -> None:
        """Make ``version`` the one program ``name`` runs by default."""
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO program_live (name, version) VALUES (?, ?)", (name, version))

    def program_versions(self, name: str) -> tuple[list[dict[str, Any]], int | None]:
        """Program ``name``'s versions, oldest first (``{"version", "created", **record}``), and its live one."""
        with self.lock:
            rows = self.db.execute(
                "SELECT version, record, created FROM programs WHERE name=? ORDER BY version", (name,)
            ).fetchall()
            live = self.db.execute("SELECT version FROM program_live WHERE name=?", (name,)).fetchone()
        versions = [{"version": v, "created": created, **json.loads(record)} for v, record, created in rows]
        return versions, (int(live[0]) if live else None)

    def program_names(self) -> list[dict[str, Any]]:
        """Every program: ``{"name", "live", "versions", "latest", "created"}``, by name."""
        with self.lock:
            rows = self.db.execute(
                "SELECT p.name, COUNT(*), MAX(p.version), MIN(p.created), l.version FROM programs p "
                "LEFT JOIN program_live l ON l.name = p.name GROUP BY p.name ORDER BY p.name"
            ).fetchall()
        return [
            {"name": name, "live": live, "versions": count, "latest": latest, "created": created}
            for name, count, latest, created, live in rows
        ]

    def open_sessions(self) -> list[dict[str, Any]]:
        """The sessions not closed (what a restarted coordinator reloads)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, pool, slot, created, ttl_s FROM sessions WHERE closed IS NULL ORDER BY created"
            ).fetchall()
        return [dict(zip(("id", "pool", "slot", "created", "ttl_s"), row, strict=True)) for row in rows]

    def session_closed(self, session_id: str) -> str | None:
        """Why a session was closed, or None if it is open or unknown."""
        with self.lock:
            row = self.db.execute("SELECT close_reason FROM sessions WHERE id=?", (session_id,)).fetchone()
        return row[0] if row else None

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

    # ------------------------------------------------------------------ jobs
    def put_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Insert new job rows, all in one transaction (a batch submitted together costs one commit)."""
        columns = ("id", "pool", "op", "args", "session", "status", "max_retries", "created")
        rows = [tuple(pickle.dumps(j[c]) if c == "args" else j[c] for c in columns) for j in jobs]
        with self.lock, transaction(self.db):
            self.db.executemany(
                "INSERT INTO jobs (id, pool, op, args, session, status, max_retries, created) VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )

    def put_job(self, job: dict[str, Any]) -> None:
        """Insert a new job row."""
        self.put_jobs([job])

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set some of a job's columns (result is pickled, error is JSON)."""
        with self.lock:
            self.db.execute(*_job_update(job_id, fields))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """One job as a dict, or None."""
        with self.read_lock:
            cursor = self.reader.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
            row = cursor.fetchone()
        return _job(row) if row else None

    def list_jobs(
        self,
        pool: str | None = None,
        status: str | None = None,
        limit: int = 1000,
        after: str | None = None,
        op: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first (ties by id), optionally of one pool, status and/or op; with ``after`` (a job id), those
        that come after it in that order: a page of a walk that jobs submitted meanwhile never shift. KeyError
        when ``after`` names no job."""
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            with self.lock:
                found = self.db.execute("SELECT created FROM jobs WHERE id=?", (after,)).fetchone()
            if found is None:
                raise KeyError(after)
            where.append("(created < ? OR (created = ? AND id < ?))")
            params += [found[0], found[0], after]
        if pool is not None:
            where.append("pool=?")
            params.append(pool)
        if status is not None:
            where.append("status=?")
            params.append(status)
        if op is not None:
            where.append("op=?")
            params.append(op)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.lock:
            rows = self.db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY created DESC, id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_job(row) for row in rows]

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        """Jobs queued, running or waiting to retry, oldest first (what a restarted coordinator resumes): read
        through ``jobs_by_status``, so a boot costs what is active, not the history."""
        marks = ",".join("?" * len(ACTIVE))
        with self.lock:
            rows = self.db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY created", ACTIVE
            ).fetchall()
        return [_job(row) for row in rows]

    def count_jobs(self) -> dict[str, dict[str, int]]:
        """Jobs by pool, then by status."""
        with self.lock:  # kept by the job_count triggers: no scan of the jobs
            rows = self.db.execute("SELECT pool, status, n FROM job_counts WHERE n > 0").fetchall()
        counts: dict[str, dict[str, int]] = {}
        for pool, status, n in rows:
            counts.setdefault(pool, {})[status] = n
        return counts

    def append_events(
        self,
        batch: list[tuple[str, int, Any]],
        checkpoints: dict[str, bytes] | None = None,
        updates: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Log many jobs' events, ``(job id, seq, data)`` in order, jobs' checkpoints (by job id) and changes to
        jobs' records (by job id: columns, as for :meth:`update_job`) in one transaction (a group commit). One
        holding a checkpoint or an update is synced to disk as it commits."""
        now = time.time()
        rows = [(job_id, seq, pickle.dumps(data), now) for job_id, seq, data in batch]
        last = {job_id: seq for job_id, seq, _ in batch}
        saved = [checkpoint_row(self.dir, job_key(job_id), blob, now) for job_id, blob in (checkpoints or {}).items()]
        changes = [_job_update(job_id, fields) for job_id, fields in (updates or {}).items()]
        durable = bool(saved or changes)
        db = self.events_db
        with self.lock:  # one transaction: the events, the jobs' counts and their checkpoints never disagree
            if durable:
                db.execute("PRAGMA synchronous=FULL")
            try:
                with transaction(db):
                    db.executemany("INSERT INTO job_events (job_id, seq, data, time) VALUES (?,?,?,?)", rows)
                    db.executemany("UPDATE jobs SET events=? WHERE id=?", [(seq, job) for job, seq in last.items()])
                    stale = upsert(db, saved)
                    for change in changes:
                        db.execute(*change)
            except BaseException:
                unlink([path for _, _, path, _ in saved if path])  # files of checkpoints never stored
                raise
            finally:
                if durable:
                    db.execute("PRAGMA synchronous=NORMAL")
        unlink(stale)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, Any]]:
        """Logged events with seq > after, in order."""
        with self.read_lock:
            rows = self.reader.execute(
                "SELECT seq, data FROM job_events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?", (job_id, after, limit)
            ).fetchall()
        return [(seq, pickle.loads(data)) for seq, data in rows]

    def delete_jobs_before(self, finished_before: float, limit: int = 500) -> int:
        """Retention: drop at most ``limit`` finished jobs older than a time (oldest first), with their events
        and checkpoints, in one transaction (one commit per batch), then the checkpoints' files; the number
        dropped (``limit`` means: call again)."""
        files: list[str] = []
        with self.lock:
            ids = [
                (r[0],)
                for r in self.db.execute(
                    "SELECT id FROM jobs WHERE finished IS NOT NULL AND finished<? ORDER BY finished LIMIT ?",
                    (finished_before, limit),
                )
            ]
            keys = [(job_key(job_id),) for (job_id,) in ids]
            if ids:
                with transaction(self.db):
                    for key in keys:
                        found = self.db.execute("SELECT path FROM checkpoints WHERE key=?", key).fetchone()
                        files += [found[0]] if found and found[0] else []
                    self.db.executemany("DELETE FROM checkpoints WHERE key=?", keys)
                    self.db.executemany("DELETE FROM job_events WHERE job_id=?", ids)
                    self.db.executemany("DELETE FROM jobs WHERE id=?", ids)
        unlink(files)
        return len(ids)

    # ----------------------------------------------------------------- files
    def put_file(self, record: dict[str, Any], data: bytes) -> None:
        """Store an uploaded file: its bytes under ``files/<id>`` (durably), then its row.

        ``record`` holds id, filename, purpose and created; ``bytes`` and ``path`` are set here.
        A crash between the two leaves an unlisted file, never a row without its bytes.
        """
        folder = self.dir / "files"
        folder.mkdir(exist_ok=True)
        path = f"files/{record['id']}"  # relative: the state_dir may move
        write_durably(self.dir / path, data)
        with self.lock:
            self.db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created, path) VALUES (?,?,?,?,?,?)",
                (record["id"], record["filename"], record["purpose"], len(data), record["created"], path),
            )

    def list_files(self, purpose: str | None = None, limit: int = -1, after: str | None = None) -> list[dict[str, Any]]:
        """Uploaded files' rows, newest first (ties by id), optionally of one purpose: at most ``limit`` (-1: all),
        after file ``after`` (KeyError when there is no such file)."""
        where: list[str] = []
        params: list[Any] = []
        if purpose is not None:
            where.append("purpose=?")
            params.append(purpose)
        with self.lock:
            if after is not None:
                found = self.db.execute("SELECT created FROM files WHERE id=?", (after,)).fetchone()
                if found is None:
                    raise KeyError(after)
                where.append("(created < ? OR (created = ? AND id < ?))")
                params += [found[0], found[0], after]
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = self.db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files {clause} ORDER BY created DESC, id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_file(row) for row in rows]

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """One uploaded file's row, or None."""
        with self.lock:
            row = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id=?", (file_id,)).fetchone()
        return _file(row) if row else None

    def read_file(self, file_id: str) -> bytes | None:
        """An uploaded file's bytes, or None if there is no such file."""
        record = self.get_file(file_id)
        return (self.dir / record["path"]).read_bytes() if record else None

    def delete_file(self, file_id: str) -> bool:
        """Forget an uploaded file (its row, then its bytes); False if there was none."""
        with self.lock:
            row = self.db.execute("SELECT path FROM files WHERE id=?", (file_id,)).fetchone()
            self.db.execute("DELETE FROM files WHERE id=?", (file_id,))
        if row:
            (self.dir / row[0]).unlink(missing_ok=True)
        return row is not None

    def close(self) -> None:
        """Close the database."""
        with self.lock, self.read_lock:
            self.reader.close()
            self.events_db.close()
            self.db.close()


_JOB_COLUMNS = (
    "id, pool, op, args, session, status, max_retries, attempts, created, started, finished, result, error, events"
)


_FILE_COLUMNS = "id, filename, purpose, bytes, created, path"


def _file(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip([name.strip() for name in _FILE_COLUMNS.split(",")], row, strict=True))


def _job_update(job_id: str, fields: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE setting some of a job's columns (result pickled, error as JSON)."""
    values = dict(fields)
    if "result" in values:
        values["result"] = pickle.dumps(values["result"])
    if values.get("error") is not None:
        values["error"] = json.dumps(values["error"])
    columns = ", ".join(f"{name}=?" for name in values)
    return f"UPDATE jobs SET {columns} WHERE id=?", (*values.values(), job_id)


def _job(row: tuple[Any, ...]) -> dict[str, Any]:
    names = [name.strip() for name in _JOB_COLUMNS.split(",")]
    job = dict(zip(names, row, strict=True))
    job["args"] = pickle.loads(job["args"])
    job["result"] = pickle.loads(job["result"]) if job["result"] is not None else None
    job["error"] = json.loads(job["error"]) if job["error"] else None
    return job
