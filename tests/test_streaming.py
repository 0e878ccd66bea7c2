"""Streaming ops: events in order, the return value, errors mid-stream, backpressure, cancel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, toolbox


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator({"s": toolbox(size=1, limits={"stream_buffer": 4})})


def test_events_arrive_in_order_then_the_result(orch: orchestrator.Orchestrator) -> None:
    stream = orch.stream("s", "ticker", n=50)
    assert [e["i"] for e in stream] == list(range(50))
    assert stream.result == 50


def test_async_generator_op_streams(orch: orchestrator.Orchestrator) -> None:
    events, result = orch.stream("s", "aticker", n=5).collect()
    assert [e["i"] for e in events] == list(range(5)) and result is None


def test_error_mid_stream_comes_after_the_events(orch: orchestrator.Orchestrator) -> None:
    seen = []
    with pytest.raises(errors.OpFailed, match="failed at 3"):
        for event in orch.stream("s", "ticker", n=10, fail_at=3):
            seen.append(event["i"])
    assert seen == [0, 1, 2]


def test_plain_op_streams_just_its_result(orch: orchestrator.Orchestrator) -> None:
    events, result = orch.stream("s", "echo", value="x").collect()
    assert events == [] and result == "x"
    assert orch.call("s", "ticker", n=3) == 3  # a streaming op called plainly gives its result


def test_slow_consumer_bounds_what_the_worker_runs_ahead(orch: orchestrator.Orchestrator, tmp_path: Path) -> None:
    mark = tmp_path / "produced"
    stream = orch.stream("s", "ticker", n=1000, mark=str(mark))
    next(stream)
    time.sleep(1.5)  # a fast producer would finish all 1000 in this time without backpressure
    produced = int(mark.read_text())
    assert produced <= 1 + 4 + 2, produced  # consumed + stream_buffer + the one being produced
    rest = list(stream)
    assert len(rest) == 999 and stream.result == 1000


def test_closing_a_stream_cancels_the_op(orch: orchestrator.Orchestrator, tmp_path: Path) -> None:
    mark = tmp_path / "produced"
    stream = orch.stream("s", "ticker", n=100_000, interval=0.01, mark=str(mark))
    next(stream)
    stream.close()
    time.sleep(0.5)
    stopped_at = int(mark.read_text())
    time.sleep(0.5)
    assert int(mark.read_text()) == stopped_at  # nothing keeps running for nobody
    assert orch.call("s", "echo", value=1, _timeout=2.0) == 1  # and the actor is free


def test_stream_in_session_and_bad_arguments(orch: orchestrator.Orchestrator) -> None:
    with orch.session("s") as session:
        assert [e["i"] for e in session.stream("ticker", n=3)] == [0, 1, 2]
    with pytest.raises(errors.InvalidArguments, match="n: "):
        list(orch.stream("s", "ticker", n="many"))
    with pytest.raises(errors.OpNotFound):
        orch.stream("s", "nope")


def test_dropped_stream_cancels_the_op_and_frees_its_slot(start_orchestrator: Start, tmp_path: Path) -> None:
    import gc

    orch = start_orchestrator({"one": toolbox(size=1, limits={"queue": 0})})  # bound: 1 outstanding call
    mark = tmp_path / "produced"
    stream = orch.stream("one", "ticker", n=100_000, interval=0.01, mark=str(mark))
    next(stream)
    del stream
    gc.collect()
    time.sleep(0.5)
    stopped_at = int(mark.read_text())
    time.sleep(0.5)
    assert int(mark.read_text()) == stopped_at
    assert orch.call("one", "echo", value="room", _timeout=2.0) == "room"
