"""Supervision: restarts within intensity, failing past it, hung actors, recycling, crashes in flight."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, actors, kill_and_wait_restart, kill_pid, toolbox, wait_until


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "restarts": toolbox(size=1, restart={"max_restarts": 5, "within_s": 60}),
            "brittle": toolbox(size=1, restart={"max_restarts": 1, "within_s": 60}),
            "hangs": toolbox(size=1, health={"period_s": 0.3, "timeout_s": 1.0}),
            "memory": toolbox(size=1, limits={"max_memory": "400MiB"}, sessions={"checkpoint": "never"}),
            "calls": toolbox(size=1, limits={"max_calls": 5}),
            "pair": toolbox(size=2),
        }
    )


def test_killed_actor_is_restarted_within_intensity(orch: orchestrator.Orchestrator) -> None:
    pid = orch.call("restarts", "whoami")["pid"]
    kill_and_wait_restart(orch, "restarts", pid)
    status = orch.status()["restarts"]
    assert status["state"] == "running" and status["restarts"] == 1
    assert status["actors"][0]["name"] == "restarts-0.1"
    assert any(e["kind"] == "died" for e in status["events"])
    assert orch.call("restarts", "echo", value="back") == "back"


def test_pool_fails_past_intensity_and_calls_get_pool_unavailable(orch: orchestrator.Orchestrator) -> None:
    kill_and_wait_restart(orch, "brittle", orch.call("brittle", "whoami")["pid"])
    kill_pid(orch.call("brittle", "whoami")["pid"])
    wait_until(lambda: orch.status()["brittle"]["state"] == "failed", what="brittle pool to fail")
    reason = orch.status()["brittle"]["reason"]
    assert "restart intensity exceeded" in reason
    with pytest.raises(errors.PoolUnavailable, match="restart intensity exceeded") as info:
        wait_until(lambda: orch.call("brittle", "echo") and False, timeout=5, what="pool_unavailable")
    assert info.value.pool == "brittle"
    assert orch.call("restarts", "echo", value=1) == 1  # other pools are untouched


def test_hung_actor_is_replaced(orch: orchestrator.Orchestrator) -> None:
    pid = orch.call("hangs", "whoami")["pid"]
    threading.Thread(target=lambda: _swallow(orch.call, "hangs", "hang"), daemon=True).start()
    wait_until(lambda: orch.status()["hangs"]["hung"] >= 1, what="hung actor to be detected")
    wait_until(
        lambda: actors(orch, "hangs")[0]["state"] == "ready" and actors(orch, "hangs")[0]["pid"] != pid,
        what="hung actor to be replaced",
    )
    assert orch.call("hangs", "echo", value="ok") == "ok"
    assert any("hung" in (e["reason"] or "") for e in orch.status()["hangs"]["events"])


def test_memory_limit_recycles_after_the_call(orch: orchestrator.Orchestrator) -> None:
    pid = orch.call("memory", "whoami")["pid"]
    assert orch.call("memory", "hog", megabytes=500) == 500  # the call itself completes
    wait_until(lambda: orch.status()["memory"]["recycles"] == 1, what="memory recycle")
    wait_until(lambda: actors(orch, "memory")[0]["state"] == "ready", what="replacement actor")
    assert orch.call("memory", "whoami")["pid"] != pid
    events = orch.status()["memory"]["events"]
    assert any(e["kind"] == "recycle" and "max_memory" in e["reason"] for e in events)
    assert orch.status()["memory"]["restarts"] == 0  # a recycle is not a crash


def test_max_calls_recycles_and_keeps_sessions(orch: orchestrator.Orchestrator) -> None:
    session = orch.session("calls")
    first_pid = session.call("whoami")["pid"]
    values = [session.call("incr") for _ in range(8)]
    assert values == list(range(1, 9))  # state moved to the replacement actor
    assert session.call("whoami")["pid"] != first_pid
    assert orch.status()["calls"]["recycles"] >= 1
    session.close()


def test_call_in_flight_on_a_dying_actor_gets_worker_crashed(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.WorkerCrashed):
        orch.call("pair", "crash")
    wait_until(
        lambda: orch.status()["pair"]["restarts"] == 1 and all(a["state"] == "ready" for a in actors(orch, "pair")),
        what="pair restart",
    )


def test_idempotent_call_is_retried_once_on_another_actor(orch: orchestrator.Orchestrator) -> None:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["v"] = orch.call("pair", "slow_echo", value=9, seconds=1.0)
        except errors.OrchestratorError as exc:
            result["v"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    # Kill whichever actor took the call (the busy one).
    busy = wait_until(lambda: [a for a in orch.status()["pair"]["actors"] if a["inflight"]], what="busy actor")
    assert thread.is_alive(), "the call ended before the kill: nothing would be retried"
    kill_pid(busy[0]["pid"])
    thread.join(timeout=30)
    assert result.get("v") == 9  # slow_echo is idempotent: retried on the other actor
    replaced = lambda: busy[0]["pid"] not in {a["pid"] for a in actors(orch, "pair")}  # noqa: E731
    wait_until(replaced, what="the killed actor's replacement")


def _swallow(fn: object, *args: object) -> None:
    with contextlib.suppress(errors.OrchestratorError):
        fn(*args)  # type: ignore[operator]
