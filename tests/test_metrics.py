"""Metrics reach Ray's metrics export port (what Prometheus scrapes) with the right names and labels.

Calls, a session (checkpointed, then restored onto a new actor after a kill),
a job, an actor kill and gateway requests each move their series; the test
reads them back from the node's Prometheus endpoint, as an operator's
Prometheus would.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

import orchestrator
from orchestrator.errors import InvalidArguments
from tests.conftest import (
    ROOT,
    GatewayProcess,
    Start,
    actors,
    kill_and_wait_restart,
    log_lines,
    scrape,
    toolbox,
    value,
    wait_until,
)


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator({"mt": toolbox(size=1, sessions={"checkpoint": "after_call"})})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


def wait_exported(expected: dict[tuple[str, ...], float]) -> str:
    """Scrape until every ``(name, label, value, label, value...)`` series reaches its value; the last scrape."""
    found: dict[tuple[str, ...], float] = {}

    def check() -> str | None:
        text = scrape()
        for key in expected:
            labels = dict(zip(key[1::2], key[2::2], strict=True))
            found[key] = value(text, key[0], **labels)
        return text if all(found[k] >= v for k, v in expected.items()) else None

    try:
        return str(wait_until(check, timeout=30, what="the metrics to be exported"))
    except AssertionError:
        raise AssertionError(f"not exported as expected (wanted at least): {expected}, found: {found}") from None


def test_calls_sessions_jobs_restarts_and_requests_are_exported(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    for a in range(3):
        assert orch.call("mt", "add", a=a) == a
    with pytest.raises(InvalidArguments):
        orch.call("mt", "add", a="x")
    session = orch.session("mt")
    assert session.call("incr", by=5) == 5  # checkpointed after the call
    job = orch.submit("mt", "trials", n=3)
    assert job.result(timeout=60) == {"total": 3, "started_from": 0}
    assert httpx.post(f"{gateway.url}/v1/pools/mt/ops/add", json={"a": 1}).json() == {"result": 1}
    refused = httpx.post(f"{gateway.url}/v1/pools/mt/ops/add", content=b"{}", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    text = wait_exported(
        {
            ("ray_orchestrator_calls_total", "pool", "mt", "op", "add", "outcome", "ok"): 4,
            ("ray_orchestrator_calls_total", "pool", "mt", "op", "add", "outcome", "invalid_arguments"): 1,
            ("ray_orchestrator_call_seconds_count", "pool", "mt", "op", "add"): 5,
            ("ray_orchestrator_sessions", "pool", "mt"): 1,
            ("ray_orchestrator_job_events_total", "pool", "mt"): 3,
            ("ray_orchestrator_jobs_finished_total", "pool", "mt", "status", "succeeded"): 1,
            ("ray_orchestrator_checkpoint_bytes_total", "pool", "mt", "kind", "session"): 1,
            ("ray_orchestrator_checkpoint_bytes_total", "pool", "mt", "kind", "job"): 1,
            ("ray_orchestrator_actor_rss_bytes", "pool", "mt", "actor", "mt-0"): 10_000_000,  # a Python process
            ("ray_orchestrator_http_requests_total", "route", "/v1/pools/{pool}/ops/{op}", "status", "200"): 1,
            ("ray_orchestrator_http_requests_total", "route", "(none)", "status", "415"): 1,
            ("ray_orchestrator_http_seconds_count", "route", "/v1/pools/{pool}/ops/{op}"): 1,
        }
    )
    assert value(text, "ray_orchestrator_call_seconds_bucket", pool="mt", op="add", le="+Inf") >= 5

    kill_and_wait_restart(orch, "mt", actors(orch, "mt")[0]["pid"])
    assert session.call("incr", by=1) == 6  # restored onto the new actor from its checkpoint
    text = wait_exported(
        {
            ("ray_orchestrator_restarts_total", "pool", "mt", "reason", "crash"): 1,
            ("ray_orchestrator_sessions_restored_total", "pool", "mt"): 1,
            ("ray_orchestrator_actor_rss_bytes", "pool", "mt", "actor", "mt-0.1"): 10_000_000,
        }
    )
    wait_until(
        lambda: value(scrape(), "ray_orchestrator_actor_rss_bytes", actor="mt-0") == 0,
        timeout=30,
        what="the dead actor's memory series to end",
    )
    session.close()


def test_log_lines_name_pool_actor_op_and_job(orch: orchestrator.Orchestrator) -> None:
    marker = f"log-line-{uuid.uuid4().hex}"
    job = orch.submit("mt", "log", message=marker)
    assert job.result(timeout=60) is None
    session = orch.session("mt")
    session.call("log", message=marker + "-session", level="warning")
    found = log_lines(marker, 2)
    in_job = next(line for line in found if not line.endswith("-session"))
    assert "pool=mt actor=mt-0" in in_job and "op=log" in in_job and f"job={job.id}" in in_job, in_job
    assert " INFO " in in_job and "tests.kit: " in in_job and "call=" in in_job
    in_session = next(line for line in found if line.endswith("-session"))
    assert f"session={session.id}" in in_session and " WARNING " in in_session, in_session
    session.close()


def test_the_grafana_dashboard_charts_only_series_that_exist() -> None:
    dashboard = json.loads((ROOT / "grafana" / "orchestrator.json").read_text())
    made = {f"ray_{m}" for m in re.findall(r'"(orchestrator_\w+)"', (ROOT / "orchestrator" / "metrics.py").read_text())}
    assert len(made) >= 15
    charted = {
        series
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for series in re.findall(r"ray_orchestrator_\w+", target["expr"])
    }
    suffixes = ("_total", "_bucket", "_count", "_sum")
    exported = made | {m + x for m in made for x in suffixes}
    unknown = charted - exported
    assert not unknown, f"the dashboard charts series no metric exports: {unknown}"
    assert made <= {s.removesuffix("_total").removesuffix("_bucket") for s in charted}, "a metric has no panel"
