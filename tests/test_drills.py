"""Whole-system drills, each in its own processes: SIGKILL of the whole `orchestrator up` process group (Ray
included) and a start again on the same state_dir; the loss of a Ray node on a multi-node cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import ROOT, free_port, up_config, wait_until


def start_up(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`orchestrator up` in a process group of its own (so the drill can kill all of it at once)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ray_address(log: Path, up: subprocess.Popen[bytes]) -> str:
    """The Ray address `up` prints once its pools are ready."""

    def printed() -> str | None:
        assert up.poll() is None, log.read_text()
        found = re.search(r"orchestrator\.connect\('([^']+)'", log.read_text())
        return found.group(1) if found else None

    return str(wait_until(printed, timeout=120, what="orchestrator up to start"))


def in_process(address: str, code: str) -> Any:
    """Run ``code`` in a fresh Python connected in-process (``orch`` bound); returns what it prints as JSON."""
    script = f"import json, orchestrator\norch = orchestrator.connect({address!r}, namespace='drill')\n{code}"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sigkill_of_the_whole_up_process_group_then_up_again(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = up_config(tmp_path, "drill", port, sessions="checkpoint: after_call")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ORCHESTRATOR_TOKEN")}
    first_log, second_log = tmp_path / "up1.log", tmp_path / "up2.log"
    up = start_up(config, env, first_log)
    try:
        address = ray_address(first_log, up)
        wait_until(lambda: _healthy(url), timeout=60, what="the gateway")
        over_http = httpx.post(f"{url}/v1/sessions", json={"pool": "toolbox"}).json()["id"]
        assert _incr(url, over_http, 2) == 2
        in_proc = in_process(address, "s = orch.session('toolbox')\ns.call('incr', by=10)\nprint(json.dumps(s.id))")
        job_id = httpx.post(
            f"{url}/v1/jobs",
            json={"pool": "toolbox", "op": "trials", "args": {"n": 150, "interval": 0.04, "checkpoint_every": 3}},
        ).json()["id"]
        wait_until(lambda: httpx.get(f"{url}/v1/jobs/{job_id}").json()["events"] > 30, what="the job to progress")

        group = [up.pid, *(p.pid for p in psutil.Process(up.pid).children(recursive=True))]
        os.killpg(up.pid, signal.SIGKILL)
        up.wait(timeout=30)
        wait_until(lambda: not any(psutil.pid_exists(pid) for pid in group), timeout=60, what="every process to die")
        assert not _healthy(url)

        up = start_up(config, env, second_log)
        address = ray_address(second_log, up)
        wait_until(lambda: _healthy(url), timeout=60, what="the gateway again")
        assert _incr(url, over_http, 1) == 3, "the session reattached over HTTP continues from its checkpoint"
        assert in_process(address, f"print(json.dumps(orch.attach({in_proc!r}).call('incr', by=1)))") == 11

        result = _wait_job(url, job_id)
        assert result["status"] == "succeeded", result
        assert result["result"]["started_from"] > 0, "the job resumes from its checkpoint"
        assert result["result"]["total"] == sum(range(150))
        events = httpx.get(f"{url}/v1/jobs/{job_id}/events", params={"follow": "false"}, timeout=60).text
        seqs = [int(line[4:]) for line in events.splitlines() if line.startswith("id: ")]
        assert seqs[:-1] == list(range(1, 301)), "events missing or repeated"  # the last id is the end marker's
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)


def test_node_loss_moves_actors_sessions_and_jobs_to_surviving_nodes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.kit.node_loss"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads(lines[-1])
    assert seen.get("before") == 5, seen
    assert seen["job"]["total"] == sum(range(80)) and seen["job"]["started_from"] > 0, seen
    assert seen["attempts"] >= 2, "the job's actor was on the removed node: it must have been re-run"
    assert seen["events"] == list(range(1, 161)) and seen["trials"] == list(range(80)), "events exactly once"
    assert seen["after"] == 6, "the session continues with its checkpointed state on another node"
    assert seen["session_actor_moved"] is True
    assert seen["pool"] == [{"state": "ready", "off_lost_node": True}] * 2, "the pool is back to full size"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _incr(url: str, session: str, by: int) -> Any:
    answer = httpx.post(f"{url}/v1/sessions/{session}/ops/incr", json={"by": by}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]


def _wait_job(url: str, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        record: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        return record if record["status"] in ("succeeded", "failed", "cancelled") else None

    return dict(wait_until(finished, timeout=180, what="the job to finish"))
