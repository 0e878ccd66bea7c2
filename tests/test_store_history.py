"""The store with a long history, on real SQLite files: the job counts status shows stay right as jobs are
added, change status and expire (kept by triggers, no scan); a store from before them is counted once when
opened; a restarted coordinator reads only the unfinished jobs; retention drops expired jobs in bounded
batches with their events and checkpoints, and nothing that has not expired; the queries behind listing,
boot and retention go through indexes, so their cost follows what they return, not the history."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from orchestrator.checkpoints import INLINE_LIMIT
from orchestrator.control.store import Store
from orchestrator.types import job_key


def job(job_id: str, pool: str = "p", status: str = "queued", created: float | None = None) -> dict[str, Any]:
    return {
        "id": job_id,
        "pool": pool,
        "op": "trials",
        "args": {"n": 1},
        "session": None,
        "status": status,
        "max_retries": 3,
        "created": time.time() if created is None else created,
    }


def true_counts(store: Store) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for pool, status, n in store.db.execute("SELECT pool, status, COUNT(*) FROM jobs GROUP BY pool, status"):
        counts.setdefault(pool, {})[status] = n
    return counts


def test_job_counts_follow_inserts_status_changes_and_deletes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(30):
        store.put_job(job(f"a{i}", pool="a" if i % 3 else "b"))
    for i in range(0, 30, 2):
        store.update_job(f"a{i}", status="running")
    for i in range(0, 30, 4):
        store.update_job(f"a{i}", status="succeeded", finished=time.time() - 100)
    store.update_job("a1", status="queued")  # no change of status: nothing moves
    store.delete_jobs_before(time.time())
    assert store.count_jobs() == true_counts(store) and store.count_jobs()["a"]["queued"] == 10
    store.close()
    assert Store(tmp_path).count_jobs() == true_counts(Store(tmp_path))


def test_a_store_from_before_the_counts_is_counted_when_opened(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(7):
        store.put_job(job(f"j{i}", status="succeeded" if i < 5 else "queued"))
    store.db.execute("DROP TABLE job_counts")  # as schema 4 had it
    store.db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    store.close()
    assert Store(tmp_path).count_jobs() == {"p": {"succeeded": 5, "queued": 2}}


def test_a_restarted_coordinator_reads_only_the_unfinished_jobs_oldest_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    for i, status in enumerate(["succeeded", "queued", "failed", "running", "cancelled", "retrying"]):
        store.put_job(job(f"j{i}", created=now - i))
        store.update_job(f"j{i}", status=status)
    assert [j["id"] for j in store.unfinished_jobs()] == ["j5", "j3", "j1"]


def test_retention_drops_expired_jobs_in_batches_and_nothing_else(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = time.time() - 3600
    for i in range(1_200):
        store.put_job(job(f"old{i}", created=old))
        store.update_job(f"old{i}", status="succeeded", finished=old + i * 1e-3)
    large = b"x" * (INLINE_LIMIT + 1)  # stored as a file of its own
    store.append_events([(f"old{i}", 1, {"e": i}) for i in range(1_200)], {"old7": b"checkpoint", "old8": large})
    (large_file,) = [row[0] for row in store.db.execute("SELECT path FROM checkpoints WHERE path IS NOT NULL")]
    store.put_job(job("recent"))
    store.update_job("recent", status="succeeded", finished=time.time())
    store.put_job(job("running-for-an-hour", created=old))
    store.update_job("running-for-an-hour", status="running")
    cutoff = time.time() - 60
    assert [store.delete_jobs_before(cutoff, 500) for _ in range(4)] == [500, 500, 200, 0]
    assert {j["id"] for j in store.list_jobs()} == {"recent", "running-for-an-hour"}
    assert store.events("old3") == [] and store.get_checkpoint(job_key("old7")) is None
    assert store.get_checkpoint(job_key("old8")) is None and not Path(large_file).exists()
    assert store.count_jobs() == {"p": {"succeeded": 1, "running": 1}}


def test_a_walk_in_pages_sees_every_job_once_while_jobs_are_added(tmp_path: Path) -> None:
    store = Store(tmp_path)
    start = time.time() - 100
    for i in range(250):  # ten share each timestamp: the id orders ties
        store.put_job(job(f"j{i:03d}", created=start + i // 10))
    seen: list[str] = []
    after = None
    while True:
        page = store.list_jobs(limit=100, after=after)
        seen += [j["id"] for j in page]
        store.put_job(job(f"new{len(seen)}"))  # submitted during the walk: newer than every page's start
        if len(page) < 100:
            break
        after = page[-1]["id"]
    assert seen == sorted((f"j{i:03d}" for i in range(250)), key=lambda i: (int(i[1:]) // 10, i), reverse=True)
    assert [j["id"] for j in store.list_jobs(limit=2, after="j005")] == ["j004", "j003"]


def test_a_walk_of_one_op_s_jobs_skips_the_others(tmp_path: Path) -> None:
    # The fine-tuning listing: one op's jobs among others of the pool, a page at a time, newest first.
    store = Store(tmp_path)
    start = time.time() - 100
    for i in range(500):
        store.put_job({**job(f"j{i:03d}", created=start + i * 0.1), "op": "finetune" if i % 2 else "optimize"})
    seen: list[str] = []
    after = None
    while True:
        page = store.list_jobs(pool="p", limit=100, after=after, op="finetune")
        seen += [j["id"] for j in page]
        store.put_job({**job(f"new{len(seen)}"), "op": "finetune"})  # newer than every page's start
        if len(page) < 100:
            break
        after = page[-1]["id"]
    assert seen == [f"j{i:03d}" for i in range(499, 0, -2)]


def test_listing_boot_and_retention_queries_use_indexes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    db = sqlite3.connect(tmp_path / "orchestrator.db")

    def plan(sql: str, *params: Any) -> str:
        return " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    listing = plan("SELECT id FROM jobs ORDER BY created DESC, id DESC LIMIT 100")
    page = "WHERE (created < ? OR (created = ? AND id < ?)) ORDER BY created DESC, id DESC LIMIT 100"
    after = plan(f"SELECT id FROM jobs {page}", 1.0, 1.0, "x")
    by_pool = plan("SELECT id FROM jobs WHERE pool=? ORDER BY created DESC, id DESC LIMIT 100", "p")
    active = plan("SELECT id FROM jobs WHERE status IN ('queued', 'running', 'retrying') ORDER BY created")
    expired = plan("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished<? ORDER BY finished LIMIT 5", 1.0)
    sessions = plan("SELECT id FROM sessions WHERE closed IS NULL ORDER BY created")
    assert "jobs_by_created" in listing and "TEMP B-TREE" not in listing, listing
    assert "jobs_by_created" in after and "TEMP B-TREE" not in after, after
    assert "jobs_by_pool" in by_pool and "TEMP B-TREE" not in by_pool, by_pool
    assert "jobs_by_status" in active, active
    assert "jobs_by_finished" in expired, expired
    assert "open_sessions" in sessions, sessions
    store.close()
