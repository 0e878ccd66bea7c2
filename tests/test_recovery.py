"""The control plane under faults: its own SIGKILL, restarts on the same state_dir, stuck and recycling actors,
bad checkpoints, failed pools, and store I/O kept off its event loop (real Ray, real SQLite)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import orchestrator
from orchestrator import errors
from tests.conftest import Start, actors, coordinator_pid, kill_and_wait_restart, kill_pid, toolbox, wait_until


def trial_numbers(events: list[tuple[int, Any]]) -> list[int]:
    return [e["trial"] for _, e in events if "trial" in e]


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tmp_path_factory: pytest.TempPathFactory) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "p": toolbox(size=2, restart={"max_restarts": 20}),
            "q": toolbox(size=1, limits={"concurrency": 1}),
            "after": toolbox(size=1, sessions={"checkpoint": "after_call"}),
            "brittle": toolbox(size=1, restart={"max_restarts": 0}),
            "retries": toolbox(size=1, restart={"max_restarts": 0, "retry_after_s": 0.5}),
        },
        state_dir=str(tmp_path_factory.mktemp("recovery") / "state"),
        jobs={"max_retries": 5},
    )


def test_coordinator_sigkill_loses_no_call_session_job_or_actor(orch: orchestrator.Orchestrator) -> None:
    pids_before = sorted(a["pid"] for a in actors(orch, "p"))
    session = orch.session("p")
    assert session.call("incr", by=1) == 1
    job = orch.submit("p", "trials", n=60, interval=0.05, checkpoint_every=3)
    wait_until(lambda: job.status()["events"] > 10, what="the job to log some events")
    seen: list[tuple[int, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(job.events()))
    reader.start()

    outcomes: list[bool] = []
    stop = threading.Event()

    def stateless_calls() -> None:
        i = 0
        while not stop.is_set():
            try:
                outcomes.append(orch.call("p", "echo", value=i) == i)
            except errors.OrchestratorError:
                outcomes.append(False)
            i += 1
            time.sleep(0.02)

    caller = threading.Thread(target=stateless_calls)
    old_pid = coordinator_pid(orch)
    kill_pid(old_pid)
    killed_at = time.monotonic()
    caller.start()
    # Sessions answer while the coordinator is down: their actor writes its checkpoint into the store itself.
    assert session.call("incr", by=1) == 2
    session.call("save")
    orch.status()  # held by Ray until the restarted coordinator answers
    status_after = time.monotonic() - killed_at
    assert coordinator_pid(orch) != old_pid, "the coordinator was not killed"
    time.sleep(max(0.0, 15.0 - (time.monotonic() - killed_at)))
    stop.set()
    caller.join(timeout=30)

    assert status_after < 10.0, f"status answered {status_after:.1f}s after the kill"
    assert len(outcomes) > 100 and sum(outcomes) / len(outcomes) >= 0.95, f"{sum(outcomes)}/{len(outcomes)} calls ok"
    assert sorted(a["pid"] for a in actors(orch, "p")) == pids_before, "pool actors must outlive the coordinator"
    assert session.call("incr", by=1) == 3, "the session keeps its state on its adopted actor"
    assert orch.attach(session.id).call("incr", by=1) == 4

    result = job.result(timeout=120)
    reader.join(timeout=30)
    events = list(job.events())
    assert [seq for seq, _ in events] == list(range(1, 121)), "events missing or repeated"
    assert trial_numbers(events) == list(range(60))
    assert seen == events, "the live reader saw a gap or a repeat"
    assert result["total"] == sum(range(60))
    assert job.status()["attempts"] >= 2 and result["started_from"] > 0, "re-run from its checkpoint"

    # The checkpoint saved while the coordinator was down was stored: the replacement actor restores it.
    holder = next(a["pid"] for a in actors(orch, "p") if a["sessions"])
    kill_and_wait_restart(orch, "p", holder)
    assert session.call("incr", by=1) == 3  # state as saved (2), not as it was when killed (4)
    session.close()


def test_queued_job_whose_session_is_gone_does_not_block_the_queue(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("q")
    first = orch.submit("q", "trials", n=10, interval=0.05)  # holds the only actor slot
    in_session = orch.submit("q", "incr", _session=session)
    behind = orch.submit("q", "echo", value="behind")
    session.close()
    assert first.result(timeout=60)["total"] == 45
    assert behind.result(timeout=30) == "behind"
    with pytest.raises(errors.SessionNotFound, match="no longer open"):
        in_session.result(timeout=30)


def test_job_landing_on_a_recycling_actor_runs_on_its_replacement(orch: orchestrator.Orchestrator) -> None:
    namespace = orch.namespace
    name = actors(orch, "q")[0]["name"]
    pid = actors(orch, "q")[0]["pid"]
    ray.get(ray.get_actor(name, namespace=namespace).drain.remote(0.0, "drained by the test"))
    job = orch.submit("q", "echo", value="ran")
    assert job.result(timeout=60) == "ran"
    assert job.status()["attempts"] == 1
    wait_until(lambda: actors(orch, "q")[0]["pid"] not in (pid, None), what="the draining actor to be replaced")


def test_bad_checkpoint_is_quarantined_and_the_session_is_lost(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("after")
    assert session.call("incr", by=5) == 5
    db = sqlite3.connect(_state_dir(orch) / "orchestrator.db")
    with db:
        db.execute("UPDATE checkpoints SET blob=? WHERE key=?", (b"not a pickle", f"session:{session.id}"))
    db.close()
    kill_and_wait_restart(orch, "after", actors(orch, "after")[0]["pid"])
    with pytest.raises(errors.SessionLost):
        session.call("incr", by=1)
    with pytest.raises(errors.SessionLost, match="quarantined"):
        orch.attach(session.id)
    events = orch.status()["after"]["events"]
    assert any(e["kind"] == "checkpoint_quarantined" and session.id in e["reason"] for e in events)
    assert orch.call("after", "echo", value=1) == 1


def test_after_call_sessions_answer_while_the_coordinator_is_frozen_and_what_they_answered_is_stored(
    orch: orchestrator.Orchestrator,
) -> None:
    """An actor on the store's node writes its sessions' checkpoints into the store itself, durably before the
    answer: its session calls go on while the coordinator answers nothing (SIGSTOP), and an actor SIGKILLed
    afterwards is replaced with the state the last answer showed."""
    session = orch.session("after")
    assert session.call("incr", by=1) == 1
    answers: list[int] = []
    frozen = coordinator_pid(orch)
    os.kill(frozen, signal.SIGSTOP)
    try:
        caller = threading.Thread(target=lambda: answers.extend(session.call("incr", by=1) for _ in range(5)))
        caller.start()
        caller.join(timeout=20)
        assert answers == [2, 3, 4, 5, 6], f"session calls waited for the frozen coordinator (answered {answers})"
    finally:
        os.kill(frozen, signal.SIGCONT)
    caller.join(timeout=60)
    kill_and_wait_restart(orch, "after", actors(orch, "after")[0]["pid"])
    assert session.call("incr", by=0) == 6, "restored from the checkpoint the actor wrote itself"
    session.close()


def test_failed_pool_restarts_on_request(orch: orchestrator.Orchestrator) -> None:
    kill_pid(orch.call("brittle", "whoami")["pid"])
    wait_until(lambda: orch.status()["brittle"]["state"] == "failed", what="the pool to fail")
    with pytest.raises(errors.PoolUnavailable):
        wait_until(lambda: orch.call("brittle", "echo") and False, timeout=5, what="pool_unavailable")
    answer = orch.restart_pool("brittle")
    assert answer["restarted"] is True
    wait_until(lambda: orch.status()["brittle"]["state"] == "running", what="the pool to run again")
    assert orch.call("brittle", "echo", value="back") == "back"
    assert orch.restart_pool("brittle")["restarted"] is False  # a running pool is left alone
    with pytest.raises(errors.PoolNotFound, match="nope"):
        orch.restart_pool("nope")


def test_failed_pool_with_retry_after_starts_again_by_itself(orch: orchestrator.Orchestrator) -> None:
    def restarts() -> list[str]:
        return [e["reason"] for e in orch.status()["retries"]["events"] if e["kind"] == "restart"]

    def serving_again(old_pid: int) -> bool:
        ready = [a for a in actors(orch, "retries") if a["state"] == "ready" and a["pid"] != old_pid]
        return bool(ready)

    for attempt in (1, 2):
        pid = orch.call("retries", "whoami")["pid"]
        kill_pid(pid)  # max_restarts 0: the pool fails at once
        wait_until(lambda n=attempt: len(restarts()) >= n, timeout=30, what=f"automatic restart {attempt}")
        wait_until(lambda p=pid: serving_again(p), timeout=30, what="the restarted pool to be ready")
        assert orch.call("retries", "echo", value=attempt) == attempt
    assert restarts()[0].startswith("restarted retry 1 after 0.5s")
    assert restarts()[1].startswith("restarted retry 2 after 1s")  # the backoff doubled


def test_checkpoint_writes_do_not_stall_the_coordinator(orch: orchestrator.Orchestrator) -> None:
    blob = os.urandom(300 * 1024**2)
    writing = orch.coordinator.put_checkpoint.remote("test:big", blob)
    time.sleep(0.3)  # the blob reaches the coordinator and its write begins
    answered = orch.coordinator.status.remote()
    done, _ = ray.wait([writing, answered], num_returns=1, timeout=120)
    assert done == [answered], "status waited for a checkpoint write"
    ray.get(writing)


def test_graceful_restart_restores_open_sessions(start_orchestrator: Start, tmp_path: Path) -> None:
    state = {"state_dir": str(tmp_path / "state")}
    pools = {"g": toolbox(size=1, sessions={"checkpoint": "never"})}
    first = start_orchestrator(pools, **state)
    session = first.session("g")
    session.call("incr", by=3)
    lost = first.session("g")
    summary = first.shutdown(drain_s=2.0)
    assert summary == {"actors_stopped": 1, "sessions_checkpointed": 2}

    second = start_orchestrator(pools, **state)
    again = second.attach(session.id)
    assert again.call("incr", by=1) == 4, "the session continues with its state"
    assert {s["id"] for s in second.sessions("g")} == {session.id, lost.id}
    with pytest.raises(errors.SessionNotFound):
        second.attach("no-such-session")


def test_stop_is_bounded_when_an_actor_is_stuck(start_orchestrator: Start) -> None:
    stuck = start_orchestrator({"s": toolbox(size=1)})
    pid = actors(stuck, "s")[0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        summary = stuck.shutdown(drain_s=1.0)
        assert time.monotonic() - started < 40, "shutdown waited on a stopped actor"
        assert summary["actors_stopped"] == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _state_dir(orch: orchestrator.Orchestrator) -> Path:
    return Path(str(ray.get(orch.coordinator.__ray_call__.remote(lambda self: str(self.store.dir)))))
