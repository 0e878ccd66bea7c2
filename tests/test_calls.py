"""Stateless calls through the in-process API on a real local Ray."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, toolbox


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "tb": toolbox(size=2, options={"greeting": "hi"}, limits={"concurrency": 2}),
            "other": toolbox(size=2),
            "tiny": toolbox(size=1, limits={"queue": 1, "call_timeout_s": 1.0}),
            "recycler": toolbox(size=1, limits={"max_calls": 25}),
        }
    )


def test_call_returns_result_and_uses_options(orch: orchestrator.Orchestrator) -> None:
    assert orch.call("tb", "echo", value={"a": [1, 2]}) == {"a": [1, 2]}
    assert orch.call("tb", "greet", name="ada") == "hi, ada"
    assert orch.call("tb", "add", a="40", b=2) == 42  # coerced from the type hints
    assert orch.call("tb", "aecho", value=7) == 7  # async def op
    assert orch.pools() == ["other", "recycler", "tb", "tiny"]


def test_bad_arguments_name_the_field(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.InvalidArguments) as info:
        orch.call("tb", "add", a="forty")
    assert info.value.detail[0]["field"] == "a" and info.value.op == "add" and info.value.pool == "tb"
    with pytest.raises(errors.InvalidArguments, match="b: Field required|a: Field required"):
        orch.call("tb", "add", b=1)
    with pytest.raises(errors.InvalidArguments, match="colour: unexpected argument"):
        orch.call("tb", "echo", value=1, colour="red")
    with pytest.raises(errors.InvalidArguments, match="call it inside a session"):
        orch.call("tb", "incr")


def test_unknown_pool_and_op(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.PoolNotFound, match="no pool 'nope'"):
        orch.call("nope", "echo")
    with pytest.raises(errors.OpNotFound, match="no op 'helper'") as info:
        orch.call("tb", "helper")
    assert info.value.pool == "tb"
    with pytest.raises(errors.OpNotFound):
        orch.call("tb", "__init__")  # only @op methods are callable


def test_op_errors_map_to_codes(orch: orchestrator.Orchestrator) -> None:
    with pytest.raises(errors.OpFailed, match="ValueError: kaput") as info:
        orch.call("tb", "fail", message="kaput")
    assert info.value.detail["type"] == "ValueError" and "traceback" not in info.value.detail
    with pytest.raises(errors.DependencyMissing) as missing:
        orch.call("tb", "needs_module", module="surely_not_installed_pkg")
    assert "surely_not_installed_pkg" in missing.value.message and "requirements.txt" in missing.value.message


def test_gpu_oom_retries_with_half_the_batch(orch: orchestrator.Orchestrator) -> None:
    assert orch.call("tb", "fake_oom", batch_size=8) == 1  # 8 -> 4 -> 2 -> 1


def test_least_outstanding_spreads_concurrent_calls(orch: orchestrator.Orchestrator) -> None:
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(orch.call("other", "slow_echo", value=1, seconds=0.3)))
        for _ in range(4)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert results == [1, 1, 1, 1]
    # 2 actors x concurrency 1: four 0.3 s calls take two rounds, not four.
    assert elapsed < 1.0, elapsed


def test_calls_are_spread_over_actors(orch: orchestrator.Orchestrator) -> None:
    pids = Counter(orch.call("other", "whoami")["pid"] for _ in range(20))
    assert len(pids) == 2


def test_queue_bound_gives_overloaded_at_once(orch: orchestrator.Orchestrator) -> None:
    # tiny: 1 actor x concurrency 1 + queue 1 = 2 calls outstanding at most.
    blockers = [threading.Thread(target=orch.call, args=("tiny", "sleep"), kwargs={"seconds": 0.4}) for _ in range(2)]
    for t in blockers:
        t.start()
    time.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(errors.Overloaded) as info:
        orch.call("tiny", "echo", value=1)
    assert time.monotonic() - start < 0.1
    assert info.value.retryable
    for t in blockers:
        t.join()
    assert orch.call("tiny", "echo", value=2) == 2


def test_call_timeout_gives_timeout_and_cancels_the_op(orch: orchestrator.Orchestrator) -> None:
    start = time.monotonic()
    with pytest.raises(errors.Timeout, match="call_timeout_s"):
        orch.call("tiny", "sleep", seconds=30)
    assert time.monotonic() - start < 3
    # The op saw ctx.cancelled and stopped, so the actor is free again at once.
    assert orch.call("tiny", "echo", value="free", _timeout=2.0) == "free"


def test_op_fans_out_50_calls_to_another_pool(orch: orchestrator.Orchestrator) -> None:
    assert orch.call("tb", "fan_out", pool="other", n=50) == list(range(50))


def test_op_calling_its_own_pool_does_not_deadlock(orch: orchestrator.Orchestrator) -> None:
    # tiny has one actor with one slot: the nested call runs inline instead of waiting on it.
    assert orch.call("tiny", "call_pool", pool="tiny", op_name="echo", args={"value": 5}) == 5
    assert orch.call("tiny", "fan_out", pool="tiny", n=3) == [0, 1, 2]


def test_async_api(orch: orchestrator.Orchestrator) -> None:
    import asyncio

    async def main() -> list[int]:
        return list(await asyncio.gather(*(orch.acall("other", "echo", value=i) for i in range(10))))

    assert asyncio.run(main()) == list(range(10))


def test_start_fails_naming_the_pool_for_a_bad_worker(start_orchestrator: Start) -> None:
    with pytest.raises(errors.InvalidConfig, match="pools.broken.worker: .*not a subclass of orchestrator.Worker"):
        start_orchestrator({"broken": toolbox(worker="tests.kit:NotAWorker")})
    with pytest.raises(errors.InvalidConfig, match="pools.badopts.options"):
        start_orchestrator({"badopts": toolbox(options={"nope": 1})})


def test_start_fails_naming_the_pool_when_the_constructor_raises(start_orchestrator: Start) -> None:
    with pytest.raises(errors.InvalidConfig, match="pools.boom: worker constructor failed: .*fail in the constructor"):
        start_orchestrator({"boom": toolbox(options={"fail_init": True}), "fine": toolbox()})


def test_call_many_larger_than_the_queue_waits_for_room(orch: orchestrator.Orchestrator) -> None:
    # tiny admits 2 outstanding calls; a batch of 20 is pipelined within that bound, not refused.
    assert orch.call_many("tiny", "echo", [{"value": i} for i in range(20)]) == list(range(20))


def test_failed_batches_do_not_leak_queue_room(orch: orchestrator.Orchestrator) -> None:
    for _ in range(3):
        with pytest.raises(errors.OpFailed):
            orch.call_many("tiny", "fail", [{"message": "x"}] * 3)
    # Had the batch leaked its outstanding counts, tiny's bound of 2 would now refuse this.
    assert orch.call_many("tiny", "echo", [{"value": 1}, {"value": 2}]) == [1, 2]
    assert orch.call("tiny", "echo", value=3) == 3


def test_call_many_sends_chunks_to_every_actor_and_answers_each_call_in_order(orch: orchestrator.Orchestrator) -> None:
    assert orch.call_many("tb", "echo", [{"value": i} for i in range(300)]) == list(range(300))
    served = Counter(answer["pid"] for answer in orch.call_many("tb", "whoami", [{}] * 200))
    assert len(served) == 2 and min(served.values()) >= 40, served  # both actors, neither left idle


def test_one_bad_call_among_many_raises_its_own_error(orch: orchestrator.Orchestrator) -> None:
    calls: list[dict[str, object]] = [{"value": i} for i in range(100)]
    calls[57] = {"value": 57, "colour": "red"}
    with pytest.raises(errors.InvalidArguments, match="colour: unexpected argument"):
        orch.call_many("tb", "echo", calls)
    failing = [{"a": i} for i in range(50)] + [{"a": "fifty"}]
    with pytest.raises(errors.InvalidArguments) as info:
        orch.call_many("tb", "add", failing)
    assert info.value.detail[0]["field"] == "a"
    assert orch.call_many("tb", "add", [{"a": i, "b": 1} for i in range(100)]) == list(range(1, 101))


def test_call_many_across_an_actor_recycling_mid_batch_answers_every_call(orch: orchestrator.Orchestrator) -> None:
    # recycler's actor retires after 25 calls: the rest of a chunk it was given runs on its successor.
    answers = orch.call_many("recycler", "whoami", [{}] * 120)
    assert len(answers) == 120 and len({a["pid"] for a in answers}) >= 3
    assert orch.call_many("recycler", "echo", [{"value": i} for i in range(60)]) == list(range(60))
