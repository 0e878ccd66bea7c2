"""What an operator sees: pool actors named by pool and worker class in Ray, job runs named after their job,
and status (API and CLI) showing what each actor runs now, with progress, and why it last restarted (real Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

import orchestrator
from orchestrator.cli.render import status_table
from tests.conftest import (
    ROOT,
    GatewayProcess,
    Start,
    actors,
    coordinator_pid,
    kill_and_wait_restart,
    kill_pid,
    toolbox,
    wait_until,
)


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator({"tb": toolbox(size=1, health={"period_s": 0.2})})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    process = GatewayProcess(orch.namespace)
    yield process
    process.stop()


def class_name(namespace: str, name: str) -> str:
    """A named actor's class name in Ray's actor table (GCS): the field ``ray.util.state.list_actors`` reports
    as ``class_name`` and the dashboard shows (both need the dashboard, which the tests' Ray does not run)."""
    from ray._private.state import actors as actor_table

    handle = ray.get_actor(name, namespace=namespace)
    return str(actor_table(handle._actor_id.hex())["ActorClassName"])


def running_job(orch: orchestrator.Orchestrator, job_id: str, done: int) -> dict[str, Any] | None:
    """The status entry of the job's op on the pool's actor, once its progress has reached ``done``."""
    for call in actors(orch, "tb")[0]["running"]:
        if call["job_id"] == job_id and (call["progress"] or {}).get("done", 0) >= done:
            return dict(call)
    return None


def test_pool_actors_show_their_pool_and_worker_class_in_ray(orch: orchestrator.Orchestrator) -> None:
    assert class_name(orch.namespace, "tb-0") == "tb:Toolbox"


def test_a_job_runs_as_a_ray_task_named_after_the_job(orch: orchestrator.Orchestrator) -> None:
    # The dashboard lists it under that name; status names it beside the running op (the op itself runs in
    # a thread of the task, where Ray reports no task name).
    job = orch.submit("tb", "trials", n=100, interval=0.05)
    call = wait_until(lambda: running_job(orch, job.id, 2), 30, "the job running")
    assert call["task"] == f"job:tb.trials:{job.id[:8]}"
    job.cancel()


def test_status_shows_a_running_jobs_op_progress_and_seconds(orch: orchestrator.Orchestrator) -> None:
    job = orch.submit("tb", "trials", n=60, interval=0.1)
    try:
        call = wait_until(lambda: running_job(orch, job.id, done=3), what="status to show the job's progress")
        assert call["op"] == "trials" and call["call_id"]
        assert call["progress"]["total"] == 60 and call["seconds"] > 0
        record = wait_until(lambda: (r := job.status())["progress"] and r, what="the job record's progress")
        assert record["status"] == "running" and record["progress"]["total"] == 60
        assert record["progress"]["done"] >= 1 and record["actor"] == "tb-0"

        table = status_table([orch.status()["tb"]])
        row = next(line for line in table.splitlines() if line.strip().startswith("tb-0"))
        assert "running" in table.splitlines()[1] and " trials " in row and "/60 " in row, table
    finally:
        job.cancel()
    job_done = wait_until(lambda: job.status()["status"] == "cancelled", what="the job to be cancelled")
    assert job_done and job.status()["progress"] is None
    wait_until(lambda: actors(orch, "tb")[0]["running"] == [], what="status to show the actor idle")


def test_cli_status_shows_the_running_op_and_watch_redraws_until_ctrl_c(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    job = orch.submit("tb", "trials", n=60, interval=0.1)
    command = [sys.executable, "-m", "orchestrator", "status", "--url", gateway.url]
    try:
        wait_until(lambda: running_job(orch, job.id, done=2), what="the job to report progress")
        table = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stdout + table.stderr
        row = next(line for line in table.stdout.splitlines() if line.strip().startswith("tb-0"))
        assert " trials " in row and "/60 " in row, table.stdout

        watch = subprocess.Popen(
            [*command, "--watch", "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        time.sleep(3.0)
        watch.send_signal(signal.SIGINT)
        output = watch.communicate(timeout=30)[0].decode()
        assert watch.returncode == 0, output
        frames = output.split("\x1b[H\x1b[2J")
        assert len(frames) >= 3 and all("tb-0" in frame for frame in frames[1:]), output
    finally:
        job.cancel()
    as_json = subprocess.run([*command, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "running" in json.loads(as_json.stdout)[0]["actors"][0]


def test_status_names_the_reason_of_an_actors_last_restart(orch: orchestrator.Orchestrator) -> None:
    before = actors(orch, "tb")[0]
    kill_and_wait_restart(orch, "tb", before["pid"])
    after = actors(orch, "tb")[0]
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_restart"]["reason"].startswith("died"), after["last_restart"]
    assert "last restart" in status_table([orch.status()["tb"]])


def test_named_pool_actors_are_adopted_after_a_coordinator_kill(orch: orchestrator.Orchestrator) -> None:
    pid, name = actors(orch, "tb")[0]["pid"], actors(orch, "tb")[0]["name"]
    old = coordinator_pid(orch)
    kill_pid(old)
    wait_until(lambda: coordinator_pid(orch) != old, timeout=60, what="the coordinator to restart")
    events = orch.status()["tb"]["events"]
    assert any(e["kind"] == "adopted" and e["actor"] == name for e in events), events
    assert actors(orch, "tb")[0]["pid"] == pid, "the actor was replaced, not adopted"
    assert class_name(orch.namespace, name) == "tb:Toolbox"
