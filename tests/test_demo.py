"""The default pools.yaml's demo pool, as the README's quick start uses it: harmless ops that work."""

from __future__ import annotations

import pytest

import orchestrator
from orchestrator import errors
from orchestrator.config import load_config
from tests.conftest import ROOT, Start, actors, kill_and_wait_restart


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    spec = load_config(ROOT / "pools.yaml").pools["demo"].model_dump()
    spec["resources"] = {"num_cpus": 0.25}  # the test Ray is small
    spec["health"] = {"period_s": 0.5, "timeout_s": 5.0}
    return start_orchestrator({"demo": spec})


def test_demo_call_session_and_stream(orch: orchestrator.Orchestrator) -> None:
    assert orch.call("demo", "greet", name="ada") == "hello, ada"
    assert orch.call("demo", "add", a="2", b=3) == 5  # coerced from the type hints
    with orch.session("demo") as session:
        assert [session.call("incr", by=2) for _ in range(3)] == [2, 4, 6]
    stream = orch.stream("demo", "ticker", n=3)
    assert list(stream) == [{"i": 0}, {"i": 1}, {"i": 2}] and stream.result == 3


def test_demo_job_resumes_after_its_actor_is_killed(orch: orchestrator.Orchestrator) -> None:
    job = orch.submit("demo", "trials", n=40, interval=0.05)
    events = job.events()
    seen = [next(events) for _ in range(10)]  # the job is running on the actor now
    kill_and_wait_restart(orch, "demo", actors(orch, "demo")[0]["pid"])
    seen += list(events)
    result = job.result(timeout=60)
    assert result["started_from"] > 0  # the re-run resumed from a checkpoint instead of starting over
    trials = [event["trial"] for _, event in seen if "trial" in event]
    assert trials == list(range(40))  # every trial exactly once, in order
    assert [seq for seq, _ in seen] == list(range(1, len(seen) + 1))


def test_demo_refuses_unbounded_work(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.InvalidArguments, match="n"):
        orch.call("demo", "ticker", n=10**9)
    with pytest.raises(errors.InvalidArguments, match="interval"):
        orch.submit("demo", "trials", n=1, interval=3600)
    with pytest.raises(errors.InvalidArguments, match="name"):
        orch.call("demo", "greet", name="x" * 10_000)


def test_a_job_op_called_directly_is_refused_as_the_caller_s_mistake(orch: orchestrator.Orchestrator) -> None:
    # trials checkpoints (a job's op): called as a plain call or a stream it cannot, and says to submit it.
    with pytest.raises(errors.InvalidArguments, match="runs as a job") as info:
        orch.call("demo", "trials", n=2)
    assert info.value.detail[0]["field"] == "op" and info.value.op == "trials"
    stream = orch.stream("demo", "trials", n=2)
    with pytest.raises(errors.InvalidArguments, match="runs as a job"):
        list(stream)
    assert orch.submit("demo", "trials", n=2).result(timeout=30) == {"trials": 2, "started_from": 0}
