"""Autoscaling within size.min..size.max on a real local Ray: up under load, down after a cool-down,
never below min, never an actor holding a session, and autoscaled actors survive the coordinator's death.
(Several nodes, pending actors and a node added mid-run: tests/test_cluster.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import orchestrator
from orchestrator.cli.render import pool_heading
from orchestrator.config import parse_config
from orchestrator.config.schema import Pool
from orchestrator.control.autoscale import DOWN, UP, Trend, decide
from orchestrator.errors import InvalidConfig
from tests.conftest import Start, actors, coordinator_pid, kill_pid, toolbox, wait_until

UP_AFTER_S, DOWN_AFTER_S = 0.3, 2.0


def elastic(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "size": {"min": 1, "max": 3},
        "limits": {"concurrency": 1},
        "autoscale": {"up_after_s": UP_AFTER_S, "down_after_s": DOWN_AFTER_S},
        "health": {"period_s": 0.2},
    }
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value}
    return toolbox(**settings)


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "elastic": elastic(),
            "pinned": elastic(size={"min": 1, "max": 2}, sessions={"per_worker": 1}),
            "kept": elastic(size={"min": 1, "max": 2}, autoscale={"down_after_s": 600}),
            "lazy": elastic(size={"min": 0, "max": 1}),
        }
    )


class Load:
    """Threads calling ``busy`` back to back until stopped; the pids that served them."""

    def __init__(self, orch: orchestrator.Orchestrator, pool: str, threads: int, seconds: float = 0.2) -> None:
        self.pids: list[int] = []
        self.stop = threading.Event()

        def run() -> None:
            while not self.stop.is_set():
                self.pids.append(orch.call(pool, "busy", seconds=seconds))

        self.threads = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def ready(orch: orchestrator.Orchestrator, pool: str) -> list[dict[str, Any]]:
    return [a for a in actors(orch, pool) if a["state"] == "ready"]


def scale_events(orch: orchestrator.Orchestrator, pool: str) -> list[tuple[str, str]]:
    return [(e["kind"], e["actor"]) for e in orch.status()[pool]["events"] if e["kind"].startswith("scale_")]


def test_a_loaded_pool_grows_to_max_spreads_its_calls_and_shrinks_back_to_min(orch: orchestrator.Orchestrator) -> None:
    assert len(actors(orch, "elastic")) == 1, "it starts at min"
    with Load(orch, "elastic", threads=4) as load:
        wait_until(lambda: len(ready(orch, "elastic")) == 3, 60, "three ready actors")
        time.sleep(3 * UP_AFTER_S + 0.5)  # still loaded: it must not grow past max
        assert len(actors(orch, "elastic")) == 3
        served_by = set(load.pids[-12:])
    assert served_by == {a["pid"] for a in actors(orch, "elastic")}, "the load's calls ran on all three actors"
    assert pool_heading(orch.status()["elastic"]).startswith("elastic (running; 3 actor(s), autoscaled 1..3;")
    wait_until(lambda: len(actors(orch, "elastic")) == 1, 30, "the pool to shrink back to min")
    time.sleep(DOWN_AFTER_S + 1)
    assert len(actors(orch, "elastic")) == 1, "never below min"
    assert orch.call("elastic", "busy", seconds=0) == actors(orch, "elastic")[0]["pid"]
    assert scale_events(orch, "elastic") == [
        ("scale_up", "elastic-1"),
        ("scale_up", "elastic-2"),
        ("scale_down", "elastic-2"),
        ("scale_down", "elastic-1"),
    ]


def test_an_actor_holding_a_session_is_never_scaled_down(orch: orchestrator.Orchestrator) -> None:
    with Load(orch, "pinned", threads=3):
        wait_until(lambda: len(ready(orch, "pinned")) == 2, 60, "two ready actors")
    first, second = orch.session("pinned"), orch.session("pinned")
    assert {first.slot, second.slot} == {0, 1}, "one session per actor"
    last = first if first.slot == 1 else second
    assert last.call("incr", by=2) == 2
    time.sleep(2 * DOWN_AFTER_S + 1)  # idle well past the cool-down
    assert len(actors(orch, "pinned")) == 2, "the last actor holds a session: it stays"
    assert last.call("incr", by=1) == 3, "the session kept its actor and its state"
    last.close()
    wait_until(lambda: len(actors(orch, "pinned")) == 1, 30, "the pool to shrink once the session closed")
    other = second if last is first else first
    assert other.call("incr", by=5) == 5, "the session on the remaining actor is untouched"


def test_autoscaled_actors_survive_the_coordinators_death(orch: orchestrator.Orchestrator) -> None:
    with Load(orch, "kept", threads=3):
        wait_until(lambda: len(ready(orch, "kept")) == 2, 60, "two ready actors")
    pids = [a["pid"] for a in actors(orch, "kept")]
    old = coordinator_pid(orch)
    kill_pid(old)
    wait_until(lambda: coordinator_pid(orch) != old, 60, "a new coordinator")
    wait_until(lambda: [a["pid"] for a in ready(orch, "kept")] == pids, 30, "both actors adopted")
    assert orch.call("kept", "busy", seconds=0) in pids


def test_a_pool_of_min_zero_starts_an_actor_for_a_queued_job_and_stops_it_after(
    orch: orchestrator.Orchestrator,
) -> None:
    assert actors(orch, "lazy") == [] and orch.status()["lazy"]["state"] == "running"
    job = orch.submit("lazy", "trials", n=3)
    assert job.result(timeout=60)["total"] == 3, "an actor was started for it"
    assert scale_events(orch, "lazy")[0] == ("scale_up", "lazy-0")
    wait_until(lambda: actors(orch, "lazy") == [], 30, "the pool to shrink back to no actor")


def test_bad_autoscale_settings_name_the_field() -> None:
    for bad, field in (({"target": 0}, "autoscale.target"), ({"up_after": 1}, "autoscale.up_after")):
        with pytest.raises(InvalidConfig) as info:
            parse_config({"pools": {"p": {"worker": "tests.kit:Toolbox", "autoscale": bad}}})
        assert f"pools.p.{field}" in info.value.message


# ------------------------------------------------------------------ the rule, without Ray
def spec(**autoscale: Any) -> Pool:
    return Pool.model_validate(
        {
            "worker": "x.y:Z",
            "size": {"min": 1, "max": 3},
            "limits": {"concurrency": 2},
            "autoscale": {"up_after_s": 5, "down_after_s": 60, **autoscale},
        }
    )


def steps(pool: Pool, load: float, ready: int, actors: int, times: Iterator[float] | list[float]) -> list[int]:
    trend = Trend()
    return [decide(pool, load, ready, actors, trend, t) for t in times]


def test_load_at_target_for_up_after_s_adds_one_actor() -> None:
    pool = spec()
    assert steps(pool, 2, 1, 1, [0, 4.9, 5]) == [0, 0, UP], "target defaults to concurrency (2)"
    assert steps(pool, 1.9, 1, 1, [0, 100]) == [0, 0], "below target"
    assert steps(pool, 6, 3, 3, [0, 100]) == [0, 0], "at max"
    assert steps(spec(target=0.5), 1, 2, 2, [0, 5]) == [0, UP], "a configured target"
    assert steps(pool, 1, 0, 1, [0, 5]) == [0, UP], "work and no ready actor: grow"


def test_a_dip_restarts_the_clock() -> None:
    pool, trend = spec(), Trend()
    assert decide(pool, 4, 2, 2, trend, 0) == 0
    assert decide(pool, 1, 2, 2, trend, 4) == 0
    assert decide(pool, 4, 2, 2, trend, 6) == 0, "high again since 6, not since 0"
    assert decide(pool, 4, 2, 2, trend, 11) == UP


def test_a_cool_down_of_low_load_removes_one_actor_never_below_min() -> None:
    pool = spec()
    # 3 actors, target 2: 2 actors carry load <= 2 at half the target.
    assert steps(pool, 2, 3, 3, [0, 59, 60]) == [0, 0, DOWN]
    assert steps(pool, 2.5, 3, 3, [0, 100]) == [0, 0], "more than the rest carry at half the target"
    assert steps(pool, 0, 1, 1, [0, 1000]) == [0, 0], "min"
