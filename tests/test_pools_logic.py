"""Supervision rules without Ray: restart intensity, placement reasons, session placement."""

from __future__ import annotations

from orchestrator.config import Pool
from orchestrator.control.pools import ActorSlot, PoolState, RestartIntensity, choose_session_slot, pending_reason


def test_restart_intensity_allows_max_then_refuses_then_forgets() -> None:
    rule = RestartIntensity(max_restarts=2, within_s=10)
    assert rule.allow(0.0) and rule.allow(1.0)
    assert not rule.allow(2.0)  # a third within 10 s
    assert rule.allow(11.5)  # the first two have aged out


def test_pending_reason_says_infeasible_or_waiting() -> None:
    node = {"total": {"CPU": 4.0, "GPU": 2.0}, "available": {"CPU": 4.0, "GPU": 0.0}}
    assert pending_reason({"CPU": 1.0}, [node]) is None
    waiting = pending_reason({"GPU": 1.0}, [node])
    assert waiting is not None and waiting.startswith("waiting for resources: needs GPU=1")
    infeasible = pending_reason({"GPU": 4.0}, [node])
    assert infeasible is not None and infeasible.startswith("infeasible")


def test_session_placement_prefers_least_loaded_and_respects_capacity() -> None:
    slots = [ActorSlot("p", i, state="ready") for i in range(3)]
    slots[2].state = "starting"
    assert choose_session_slot(slots, {0: 2, 1: 1}, per_worker=0) is slots[1]
    assert choose_session_slot(slots, {0: 1, 1: 1}, per_worker=1) is None


def test_pool_state_slots_and_request() -> None:
    spec = Pool.model_validate(
        {"worker": "a.b:C", "size": 3, "resources": {"num_cpus": 2, "num_gpus": 0.5, "memory": "1GiB"}}
    )
    pool = PoolState("light", spec)
    assert [s.name for s in pool.slots] == ["light-0", "light-1", "light-2"]
    assert pool.resource_request() == {"CPU": 2.0, "GPU": 0.5, "memory": float(1024**3)}
    pool.slots[0].gen = 2
    assert pool.slots[0].name == "light-0.2"
