"""Sessions: pinned to one actor, ordered, restored after a crash, closed when idle."""

from __future__ import annotations

import threading
import time

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, actors, kill_and_wait_restart, toolbox, wait_until


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "durable": toolbox(size=2, limits={"concurrency": 4}, sessions={"checkpoint": "after_call"}),
            "fragile": toolbox(size=1, sessions={"checkpoint": "never"}),
            "explicit": toolbox(size=1, sessions={"checkpoint": "explicit"}),
            "idle": toolbox(size=1, sessions={"idle_timeout_s": 1.0}),
            "owned": toolbox(size=2, sessions={"per_worker": 1}),
        }
    )


def test_session_is_pinned_and_keeps_state(orch: orchestrator.Orchestrator) -> None:
    with orch.session("durable") as session:
        pids = {session.call("whoami")["pid"] for _ in range(10)}
        assert len(pids) == 1
        assert [session.call("incr", by=2) for _ in range(3)] == [2, 4, 6]
        other = orch.session("durable")
        assert other.call("incr") == 1  # sessions never share state
        other.close()
    with pytest.raises(errors.SessionNotFound):
        session.call("incr")


def test_concurrent_calls_in_one_session_run_in_order(orch: orchestrator.Orchestrator) -> None:
    with orch.session("durable") as session:
        threads = []
        for i in range(12):
            thread = threading.Thread(target=session.call, args=("append",), kwargs={"item": i, "seconds": 0.01})
            threads.append(thread)
            thread.start()
            time.sleep(0.005)  # submissions in a known order, far faster than the ops run
        for thread in threads:
            thread.join()
        assert session.call("append", item="end") == [*range(12), "end"]


def test_session_survives_sigkill_with_after_call_checkpoint(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("durable")
    assert [session.call("incr") for _ in range(3)] == [1, 2, 3]
    pid = session.call("whoami")["pid"]
    kill_and_wait_restart(orch, "durable", pid)
    assert session.call("incr") == 4  # restored from the checkpoint on the new actor
    assert session.call("whoami")["pid"] != pid
    session.close()


def test_after_call_means_a_kill_right_after_any_answer_loses_nothing(orch: orchestrator.Orchestrator) -> None:
    """What the README promises for ``after_call``: once a call has answered, its state is stored; a call that
    changed nothing stores nothing new (the checkpoint before it already holds that state)."""
    session = orch.session("durable")
    assert session.call("incr", by=7) == 7
    assert session.call("incr", by=0) == 7  # changed nothing
    kill_and_wait_restart(orch, "durable", session.call("whoami")["pid"])  # SIGKILL right after the answers
    assert session.call("incr", by=0) == 7
    assert session.call("incr", by=1) == 8
    kill_and_wait_restart(orch, "durable", session.call("whoami")["pid"])
    assert session.call("incr", by=0) == 8
    session.close()


def test_session_lost_without_checkpoint(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("fragile")
    assert session.call("incr") == 1
    kill_and_wait_restart(orch, "fragile", session.call("whoami")["pid"])
    with pytest.raises(errors.SessionLost, match="no checkpoint"):
        session.call("incr")


def test_explicit_checkpoint_restores_what_was_saved(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("explicit")
    session.call("incr", by=5)
    session.call("save")
    session.call("incr", by=1)  # after the checkpoint: lost in the crash
    kill_and_wait_restart(orch, "explicit", session.call("whoami")["pid"])
    assert session.call("incr", by=0) == 5


def test_session_busy_in_a_long_call_is_never_idle(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("idle")  # idle_timeout_s: 1, pinged every 0.5 s
    assert session.call("append", item="slow", seconds=3.0) == ["slow"]  # three idle timeouts long
    assert session.call("append", item="next") == ["slow", "next"]  # still open, state intact
    session.close()


def test_idle_timeout_closes_session(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("idle")
    session.call("incr")
    wait_until(lambda: not orch.sessions("idle"), timeout=10, what="idle session to be reaped")
    with pytest.raises(errors.SessionNotFound, match="idle for more than 1s"):
        session.call("incr")


def test_ttl_closes_session(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("durable", ttl_s=0.5)
    wait_until(lambda: session.id not in {s["id"] for s in orch.sessions()}, timeout=10, what="ttl expiry")
    with pytest.raises(errors.SessionNotFound, match="ttl"):
        session.call("incr")


def test_per_worker_one_owns_the_actor(orch: orchestrator.Orchestrator) -> None:
    first, second = orch.session("owned"), orch.session("owned")
    assert first.call("whoami")["pid"] != second.call("whoami")["pid"]
    with pytest.raises(errors.Overloaded, match="holds its 1 session"):
        orch.session("owned")
    first.close()
    # Stateless calls avoid the actor a session owns.
    owned_pid = second.call("whoami")["pid"]
    assert all(orch.call("owned", "whoami")["pid"] != owned_pid for _ in range(5))
    second.close()
    assert {a["sessions"] for a in actors(orch, "owned")} == {0}


def test_session_in_unknown_pool(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.PoolNotFound):
        orch.session("nope")
