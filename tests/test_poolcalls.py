"""Pool-wide calls on a real local Ray: an op that reaches every actor of a pool, is remembered durably, and is
replayed on actors that start later (after a crash, and after the coordinator itself was restarted)."""

from __future__ import annotations

from typing import Any

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, actors, coordinator_pid, kill_and_wait_restart, kill_pid, wait_until


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    pool = {"worker": "tests.kit.registry:Registry", "size": 2, "resources": {"num_cpus": 0.25}}
    return start_orchestrator({"reg": pool})


def each_actor(orch: orchestrator.Orchestrator) -> dict[int, dict[str, Any]]:
    """What every actor of the pool holds, by pid (each actor asked directly)."""
    import ray

    out = {}
    for slot in actors(orch, "reg"):
        handle = ray.get_actor(slot["name"], namespace=orch.namespace)
        answer = ray.get(handle.call.remote(("held", {}, None, None, "test", ""), True))
        out[answer["pid"]] = answer["items"]
    return out


def test_a_pool_wide_call_reaches_every_actor_and_is_replayed_on_a_restarted_one(
    orch: orchestrator.Orchestrator,
) -> None:
    assert orch.call("reg", "put", name="a", value=1) == {"a": 1}
    orch.call("reg", "put", name="b", value=2)
    orch.call("reg", "put", name="a", value=3)  # the same key: replaces the remembered call
    held = each_actor(orch)
    assert len(held) == 2 and all(items == {"a": 3, "b": 2} for items in held.values()), held
    assert set(orch.call_many("reg", "touch", [{}])) <= set(held)

    victim = next(iter(held))
    kill_and_wait_restart(orch, "reg", victim)
    after = each_actor(orch)
    assert victim not in after and all(items == {"a": 3, "b": 2} for items in after.values()), after

    orch.call("reg", "drop", name="b")
    survivor = next(iter(each_actor(orch)))
    kill_and_wait_restart(orch, "reg", survivor)
    assert all(items == {"a": 3} for items in each_actor(orch).values())  # dropped: not replayed


def test_remembered_calls_survive_a_coordinator_restart(orch: orchestrator.Orchestrator) -> None:
    orch.call("reg", "put", name="durable", value="yes")
    old = coordinator_pid(orch)
    kill_pid(old)
    wait_until(lambda: coordinator_pid(orch) != old, what="the coordinator to restart")
    orch.status()  # answers once the new coordinator has adopted the actors
    victim = next(iter(each_actor(orch)))
    kill_and_wait_restart(orch, "reg", victim)  # the new actor is started by the restarted coordinator
    held = each_actor(orch)
    assert victim not in held and all(items.get("durable") == "yes" for items in held.values()), held


def test_a_pool_wide_call_every_actor_refuses_is_an_error_and_not_remembered(
    orch: orchestrator.Orchestrator,
) -> None:
    before = each_actor(orch)
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.call("reg", "put", name="nope", value="bad")
    assert refused.value.detail[0]["field"] == "value"
    with pytest.raises(errors.InvalidArguments) as missing:
        orch.call("reg", "put", value=1)  # no name: nothing to remember it by
    assert missing.value.detail[0]["field"] == "name"
    victim = next(iter(before))
    kill_and_wait_restart(orch, "reg", victim)
    assert all("nope" not in items for items in each_actor(orch).values())
    replayed = [e for e in orch.status()["reg"]["events"] if e["kind"] == "replay_failed"]
    assert replayed == [], replayed  # the refused call was not remembered, so not replayed either


def test_a_pool_wide_op_in_a_session_still_reaches_every_actor_and_is_not_a_job(
    orch: orchestrator.Orchestrator,
) -> None:
    with orch.session("reg") as session:
        session.call("put", name="from-session", value=7)
    assert all(items.get("from-session") == 7 for items in each_actor(orch).values())
    before = len(orch.jobs("reg"))
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("reg", "put", name="job", value=1)
    assert refused.value.detail[0]["field"] == "op" and len(orch.jobs("reg")) == before
