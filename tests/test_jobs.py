"""Long-running jobs on a real Ray and a real SQLite: exactly-once events, crash recovery, cancel, queueing."""

from __future__ import annotations

import pickle
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import orchestrator
from orchestrator import errors
from orchestrator.checkpoints import INLINE_LIMIT
from orchestrator.control.store import Store
from orchestrator.types import job_key
from tests.conftest import Start, actors, coordinator_pid, events_killing_once, kill_pid, toolbox, wait_until
from tests.kit.history import finished_jobs


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "jobs": toolbox(size=2, limits={"concurrency": 1}, restart={"max_restarts": 50}),
            "small": toolbox(size=2, limits={"concurrency": 2}),
        },
        jobs={"max_retries": 5, "cancel_grace_s": 1.0},
    )


def trial_numbers(events: list[tuple[int, Any]]) -> list[int]:
    return [e["trial"] for _, e in events if "trial" in e]


def test_job_runs_and_logs_every_event_once(orch: orchestrator.Orchestrator) -> None:
    job = orch.submit("jobs", "trials", n=10)
    assert job.result(timeout=30) == {"total": 45, "started_from": 0}
    events = list(job.events())
    assert [seq for seq, _ in events] == list(range(1, 21))  # 10 progress + 10 trial events
    assert trial_numbers(events) == list(range(10))
    assert events[0][1] == {"progress": {"done": 1, "total": 10}}
    assert job.status()["status"] == "succeeded" and job.status()["attempts"] == 1
    # A reader resuming after seq 13 gets exactly the rest.
    assert [seq for seq, _ in job.events(after=13)] == list(range(14, 21))
    assert [seq for seq, _ in job.events(after=20, follow=False)] == []


def test_fast_jobs_running_together_log_every_event_once_in_order(orch: orchestrator.Orchestrator) -> None:
    # Ops that yield as fast as they can: their events go out in batches and are committed together with the
    # other jobs' (group commit), yet each job's log is every event, once, in order, as its live reader saw it.
    n = 3000
    jobs = [orch.submit("small", "trials", n=n, checkpoint_every=700) for _ in range(3)]
    seen: list[list[tuple[int, Any]]] = [[] for _ in jobs]
    readers = [threading.Thread(target=lambda j=j, s=s: s.extend(j.events())) for j, s in zip(jobs, seen, strict=True)]
    for reader in readers:
        reader.start()
    for job in jobs:
        assert job.result(timeout=120) == {"total": sum(range(n)), "started_from": 0}
    for reader in readers:
        reader.join(timeout=60)
    for job, got in zip(jobs, seen, strict=True):
        events = list(job.events())
        assert [seq for seq, _ in events] == list(range(1, 2 * n + 1)), "events missing or repeated"
        assert trial_numbers(events) == list(range(n))
        assert got == events


@pytest.mark.parametrize("run", range(3))
def test_job_survives_sigkill_at_random_points(orch: orchestrator.Orchestrator, run: int) -> None:
    rng = random.Random(run)
    job = orch.submit("jobs", "trials", n=100, interval=0.02, checkpoint_every=3)
    seen: list[tuple[int, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(job.events()))
    reader.start()
    killed: list[int] = []

    def running_on() -> int | None:
        record = job.status()
        found = [a for a in actors(orch, "jobs") if a["name"] == record["actor"] and a["pid"] not in (None, *killed)]
        return found[0]["pid"] if found and record["status"] == "running" else None

    for _ in range(2):
        time.sleep(rng.uniform(0.2, 0.6))
        killed.append(wait_until(running_on, what="the job to run on a live actor"))
        kill_pid(killed[-1])
    result = job.result(timeout=120)
    reader.join(timeout=30)
    record = job.status()
    assert record["status"] == "succeeded", record
    events = list(job.events())
    assert [seq for seq, _ in events] == list(range(1, 201)), "events missing or repeated"
    assert trial_numbers(events) == list(range(100))
    assert seen == events  # the live reader saw the same log, in order, once
    assert record["attempts"] == 3, "both kills must have landed on the running job"
    assert result["started_from"] > 0, "a re-run must resume from its checkpoint, not from zero"
    assert result["total"] == sum(range(100))


def test_progress_reported_before_a_checkpoint_is_logged_before_it(orch: orchestrator.Orchestrator) -> None:
    # The re-run resumes right after the checkpoint: the progress event reported before it must already be
    # logged, or the re-run's first step would be taken for it and dropped.
    job = orch.submit("jobs", "steps", n=6, interval=0.3)
    events, _ = events_killing_once(orch, job, "jobs", lambda e: e.get("progress") == {"done": 3})
    assert job.result(timeout=60) == 6
    assert job.status()["attempts"] == 2
    assert events == [event for i in range(6) for event in ({"step": i}, {"progress": {"done": i + 1}})]


def test_cancel_stops_a_cooperative_op(orch: orchestrator.Orchestrator) -> None:
    job = orch.submit("jobs", "trials", n=10_000, interval=0.01)
    wait_until(lambda: job.status()["events"] > 2, what="job to start")
    answer = job.cancel()
    assert answer["cancelled"] is True
    wait_until(lambda: job.status()["status"] == "cancelled", timeout=10, what="cancelled status")
    with pytest.raises(errors.JobCancelled):
        job.result(timeout=1)
    again = job.cancel()
    assert again == {"id": job.id, "status": "cancelled", "cancelled": False, "message": "job already cancelled"}


def test_job_ignoring_cancel_is_killed_after_grace(orch: orchestrator.Orchestrator) -> None:
    # Stuck in a 30 s step, it neither yields nor looks at ctx.cancelled: only the kill can stop it.
    job = orch.submit("jobs", "trials", n=3, interval=30, ignore_cancel=True)
    wait_until(lambda: job.status()["actor"], what="job to start")
    name = job.status()["actor"]
    pid = next(a["pid"] for a in actors(orch, "jobs") if a["name"] == name)
    job.cancel()
    wait_until(lambda: job.status()["status"] == "cancelled", timeout=15, what="hard-killed job to be cancelled")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    wait_until(lambda: all(a["state"] == "ready" for a in actors(orch, "jobs")), what="actor replaced")


def test_hundred_jobs_on_a_small_pool(orch: orchestrator.Orchestrator) -> None:
    wait_until(lambda: all(a["rss"] for a in actors(orch, "small")), what="memory figures from the pings")
    rss_before = sum(a["rss"] for a in actors(orch, "small"))
    done_before = orch.status()["small"]["jobs"].get("succeeded", 0)  # other tests' jobs on this pool
    jobs = [orch.submit("small", "trials", n=5, interval=0.05) for _ in range(100)]  # ~0.25 s each
    statuses = {j.status()["status"] for j in jobs}
    assert "queued" in statuses  # 2 actors x 2 slots: the rest wait their turn
    assert [j.result(timeout=180)["total"] for j in jobs] == [10] * 100
    assert orch.status()["small"]["jobs"] == {"succeeded": done_before + 100}
    rss_after = sum(a["rss"] or 0 for a in actors(orch, "small"))
    assert rss_after < rss_before + 200 * 1024**2, (rss_before, rss_after)


def test_jobs_submitted_together_each_run_once_even_when_an_actor_dies_under_them(
    orch: orchestrator.Orchestrator,
) -> None:
    # One commit queues them all; their starts and outcomes share commits too. An actor SIGKILLed while they run
    # costs nothing: every job ends with its own result and every event of it once, in order.
    sizes = [k % 7 + 1 for k in range(300)]
    jobs = orch.submit_many("small", "trials", [{"n": n, "interval": 0.002} for n in sizes])
    assert len({job.id for job in jobs}) == 300
    pid = actors(orch, "small")[0]["pid"]
    wait_until(lambda: sum(j.status()["status"] == "succeeded" for j in jobs[:40]) >= 20, what="some jobs done")
    kill_pid(pid)
    records = orch.wait(jobs, timeout=180)
    assert [r["id"] for r in records] == [job.id for job in jobs]
    assert [r["result"]["total"] for r in records] == [sum(range(n)) for n in sizes]
    assert any(r["attempts"] > 1 for r in records), "the kill hit no running job"
    for job, n in zip(jobs, sizes, strict=True):
        events = list(job.events())
        assert trial_numbers(events) == list(range(n)), job.id
        assert [seq for seq, _ in events] == list(range(1, 2 * n + 1)), job.id
    listed = {job["id"] for job in orch.jobs(pool="small", limit=10_000)}
    assert {job.id for job in jobs} <= listed


def test_a_bad_job_in_a_batch_refuses_the_whole_batch_naming_it(orch: orchestrator.Orchestrator) -> None:
    def stored() -> int:
        return sum(orch.status()["small"]["jobs"].values())

    before = stored()
    with pytest.raises(errors.InvalidArguments) as info:
        orch.submit_many("small", "trials", [{"n": 1}, {"n": 2}, {"n": 3}, {"n": "many"}])
    assert info.value.detail[0]["field"] == "args[3].n" and "args[3]" in str(info.value)
    with pytest.raises(errors.InvalidArguments) as info:
        orch.submit_many("small", "trials", [])
    assert info.value.detail[0]["field"] == "args"
    with pytest.raises(errors.InvalidArguments) as info:
        orch.submit_many("small", "trials", [{"n": 1}], _max_retries=99)
    assert info.value.detail[0]["field"] == "max_retries"
    with pytest.raises(errors.OpNotFound):
        orch.submit_many("small", "nope", [{"n": 1}])
    slow = orch.submit_many("small", "trials", [{"n": 1}, {"n": 40, "interval": 0.05}])
    with pytest.raises(errors.Timeout, match="1 of 2 jobs still unfinished"):
        orch.wait(slow, timeout=0.5)
    with pytest.raises(errors.JobNotFound):
        orch.wait([slow[0], orchestrator.Job(orch, "not-a-job")], timeout=1)
    assert [r["status"] for r in orch.wait(slow, timeout=60)] == ["succeeded", "succeeded"]
    before += 2
    assert stored() == before, "a refused batch queued some of its jobs"


def test_submit_refuses_bad_input_at_once(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.PoolNotFound):
        orch.submit("nope", "trials", n=1)
    with pytest.raises(errors.OpNotFound):
        orch.submit("jobs", "nope")
    with pytest.raises(errors.InvalidArguments) as info:
        orch.submit("jobs", "trials", n="many")
    assert info.value.detail[0]["field"] == "n"
    with pytest.raises(errors.JobNotFound):
        orch.job("not-a-job")
    with pytest.raises(errors.SessionNotFound):
        orch.submit("jobs", "trials", _session="no-such-session", n=1)


def test_failed_job_keeps_its_error(orch: orchestrator.Orchestrator) -> None:
    job = orch.submit("jobs", "ticker", n=5, fail_at=2)
    with pytest.raises(errors.OpFailed, match="failed at 2"):
        job.result(timeout=30)
    assert [seq for seq, _ in job.events()] == [1, 2]
    assert job.status()["error"]["code"] == "op_failed"
    assert {j["id"] for j in orch.jobs(pool="jobs", status="failed")} >= {job.id}


def test_job_in_a_session_uses_its_state(orch: orchestrator.Orchestrator) -> None:
    with orch.session("jobs") as session:
        session.call("incr", by=41)
        job = orch.submit("jobs", "incr", _session=session)
        assert job.result(timeout=30) == 42


def test_unfinished_job_resumes_when_the_orchestrator_restarts(start_orchestrator: Start, tmp_path: Any) -> None:
    state = {"state_dir": str(tmp_path / "state")}
    pools = {"p": toolbox(size=1)}
    first = start_orchestrator(pools, **state)
    job_id = first.submit("p", "trials", n=150, interval=0.02).id
    wait_until(lambda: first.job(job_id).status()["events"] > 20, what="the job to log some events")
    first.shutdown(drain_s=0.5)

    second = start_orchestrator(pools, **state)
    job = second.job(job_id)
    result = job.result(timeout=120)
    assert result["started_from"] > 0, "the job must resume from its checkpoint after the restart"
    assert result["total"] == sum(range(150))
    events = list(job.events())
    assert [seq for seq, _ in events] == list(range(1, 301))
    assert trial_numbers(events) == list(range(150))


def test_retention_on_a_running_coordinator_drops_expired_jobs_in_batches_while_it_answers(
    start_orchestrator: Start, tmp_path: Path
) -> None:
    # 60,000 jobs finished two days ago land in the store of a running orchestrator whose retention is a day;
    # its coordinator is SIGKILLed, so the restarted one starts a retention pass as it boots. While the pass
    # runs, the coordinator answers (status, a job submitted and run); the expired jobs go 500 at a time with
    # their events; the jobs that have not expired stay, with their events.
    state = tmp_path / "state"
    orch = start_orchestrator({"p": toolbox(size=1)}, state_dir=str(state), jobs={"retention_s": 86400})
    kept = orch.submit("p", "trials", n=3)
    kept.result(timeout=30)
    expired = 60_000
    finished_jobs(state / "orchestrator.db", expired, "p", time.time() - 2 * 86400)
    old_pid = coordinator_pid(orch)
    kill_pid(old_pid)
    db = sqlite3.connect(state / "orchestrator.db", timeout=30)  # a WAL reader: never waits for the writer

    def left() -> int:
        return int(db.execute("SELECT COUNT(*) FROM jobs WHERE id LIKE 'old%'").fetchone()[0])

    seen: list[int] = []  # expired jobs left, read between the coordinator's answers
    answered_during = 0  # status answers that came while the pass was under way (before and after them)
    submitted: list[orchestrator.Job] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1] > 0):
        before = left()
        try:
            orch.status()
        except errors.OrchestratorError:
            continue  # the coordinator is restarting
        seen += [before, left()]
        if seen[-1] > 0 and before < expired:
            answered_during += 1
            if not submitted:
                submitted.append(orch.submit("p", "trials", n=2))  # a job submitted during the pass runs
    assert coordinator_pid(orch) != old_pid, "the coordinator was not killed"
    assert seen and seen[-1] == 0, f"the expired jobs were not all dropped: {seen[-5:]}"
    during = {n for n in seen if 0 < n < expired}
    assert len(during) >= 3 and answered_during >= 3, f"no batches between answers: {sorted(during)[:10]}"
    assert all(n % 500 == 0 for n in during), f"a batch was not 500 jobs: {sorted(during)[:10]}"
    assert submitted and submitted[0].result(timeout=60) == {"total": 1, "started_from": 0}
    assert [seq for seq, _ in kept.events()] == [1, 2, 3, 4, 5, 6]
    assert db.execute("SELECT COUNT(*) FROM job_events WHERE job_id LIKE 'old%'").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (2,)
    db.close()


# ------------------------------------------------------------------ the store, without Ray
def test_a_checkpoint_commits_with_the_events_before_it_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path)
    small = pickle.dumps((b"first", 2))
    store.append_events([("j", 1, {"e": 1}), ("j", 2, {"e": 2})], {"j": small})
    assert store.get_checkpoint(job_key("j")) == small
    large = pickle.dumps((b"x" * (INLINE_LIMIT + 1), 3))
    store.append_events([("j", 3, {"e": 3})], {"j": large})  # a large one goes to a file of its own
    assert store.get_checkpoint(job_key("j")) == large
    [file] = (tmp_path / "checkpoints").iterdir()
    larger = pickle.dumps((b"y" * (INLINE_LIMIT + 1), 5))
    with pytest.raises(sqlite3.IntegrityError):  # event 3 is logged already: the whole batch fails
        store.append_events([("j", 4, {"e": 4}), ("j", 3, {"e": "again"})], {"j": larger})
    assert [seq for seq, _ in store.events("j")] == [1, 2, 3], "none of the failed batch's events"
    assert store.get_checkpoint(job_key("j")) == large, "nor its checkpoint: the last stored one is whole"
    assert list((tmp_path / "checkpoints").iterdir()) == [file], "the failed checkpoint's file is gone"
    store.append_events([("j", 4, {"e": 4})], {"j": larger})
    assert store.get_checkpoint(job_key("j")) == larger
    assert file not in list((tmp_path / "checkpoints").iterdir()), "the replaced checkpoint's file is deleted"
    store.close()
