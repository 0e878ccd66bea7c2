"""History written straight into a store's SQLite file, as long use leaves it (for tests and benches)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path


def finished_jobs(db_path: Path, n: int, pool: str, finished: float, prefix: str = "old") -> None:
    """``n`` succeeded ``trials`` jobs of ``pool`` (ids ``<prefix>00000000``...) with two events each, finished
    from ``finished`` on (0.1 ms apart); committed in one transaction, beside a running store if there is one."""
    ids = [f"{prefix}{i:08d}" for i in range(n)]
    args, result, event = pickle.dumps({"n": 1}), pickle.dumps({"trials": 1, "started_from": 0}), pickle.dumps({})
    db = sqlite3.connect(db_path, timeout=30)
    with db:
        db.executemany(
            "INSERT INTO jobs (id, pool, op, args, session, status, max_retries, attempts, created, started,"
            " finished, result, error, events) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (job_id, pool, "trials", args, None, "succeeded", 3, 1, at, at, at, result, None, 2)
                for job_id, at in ((job_id, finished + i * 1e-4) for i, job_id in enumerate(ids))
            ),
        )
        db.executemany(
            "INSERT INTO job_events (job_id, seq, data, time) VALUES (?,?,?,?)",
            ((job_id, seq, event, finished) for job_id in ids for seq in (1, 2)),
        )
    db.close()
