"""The `orchestrator` command driven as subprocesses: up, status, call, sessions, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port, up_config, wait_until

COMMANDS = ["up", "gateway", "down", "status", "call", "sessions", "jobs", "jobs submit", "jobs watch", "jobs list"]
COMMANDS += ["jobs cancel", "jobs result", "pools restart"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = run(*command.split(), "--help")
    assert result.returncode == 0 and "usage: orchestrator" in result.stdout


def test_up_status_call_down(tmp_path: Path) -> None:
    port = free_port()
    config = up_config(tmp_path, "cli-test", port)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ORCHESTRATOR_TOKEN")}
    env["ORCHESTRATOR_URL"] = f"http://127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> bool:
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=90, what="orchestrator up to serve its gateway")
        status = run("status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        pools = json.loads(status.stdout)
        assert pools[0]["name"] == "toolbox" and pools[0]["actors"][0]["state"] == "ready"
        table = run("status", env=env)
        assert "toolbox-0" in table.stdout and "ready" in table.stdout

        call = run("call", "toolbox", "echo", 'value={"a": [1, 2]}', env=env)
        assert json.loads(call.stdout) == {"a": [1, 2]}
        stream = run("call", "toolbox", "ticker", "n=3", env=env)
        assert [json.loads(line) for line in stream.stdout.splitlines()] == [
            {"i": 0},
            {"i": 1},
            {"i": 2},
            {"result": 3},
        ]
        bad = run("call", "toolbox", "add", "a=x", env=env)
        assert bad.returncode == 2 and "invalid_arguments" in bad.stdout and "a:" in bad.stdout
        assert run("call", "toolbox", "echo", "novalue", env=env).returncode == 2
        opened = httpx.post(f"http://127.0.0.1:{port}/v1/sessions", json={"pool": "toolbox"}).json()["id"]
        assert opened in run("sessions", env=env).stdout
        running = run("pools", "restart", "toolbox", env=env)
        assert running.returncode == 1 and "only a failed or stopped pool is restarted" in running.stdout
        unknown = run("pools", "restart", "nope", env=env)
        assert unknown.returncode == 2 and "pool_not_found" in unknown.stdout and "nope" in unknown.stdout

        # A job keeps running while the gateway process dies and `up` restarts it.
        job_id = run("jobs", "submit", "toolbox", "trials", "n=30", "interval=0.05", env=env).stdout.strip()
        actor_pid = pools[0]["actors"][0]["pid"]

        def gateway_child() -> psutil.Process | None:
            for child in psutil.Process(up.pid).children():
                try:
                    if "gateway" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                        return child
                except psutil.Error:  # exited (or a zombie) while we looked
                    continue
            return None

        gateway = gateway_child()
        assert gateway is not None
        gateway.kill()
        wait_until(lambda: (gateway_child() or gateway).pid != gateway.pid, what="a new gateway process")
        wait_until(ready, timeout=60, what="the restarted gateway")
        watch = run("jobs", "watch", job_id, env=env)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        assert f"job {job_id}: succeeded" in watch.stdout and '"total": 435' in watch.stdout
        assert json.loads(run("jobs", "result", job_id, env=env).stdout) == {"total": 435, "started_from": 0}
        assert job_id in run("jobs", "list", env=env).stdout
        assert "job already succeeded" in run("jobs", "cancel", job_id, env=env).stdout
        assert json.loads(run("status", "--json", env=env).stdout)[0]["actors"][0]["pid"] == actor_pid

        # Admin routes take a same-origin JSON request only: what a web page can send does not stop the server.
        shutdown = f"http://127.0.0.1:{port}/v1/shutdown"
        plain = httpx.post(shutdown, content=b"{}", headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
        assert httpx.post(shutdown, json={}, headers={"origin": "http://evil.example"}).status_code == 403
        assert httpx.post(shutdown, json={}, headers={"host": "evil.example"}).status_code == 421
        up.send_signal(signal.SIGHUP)  # forwarded to the gateway (token reload), and `up` goes on
        time.sleep(1.0)
        assert ready() and run("call", "toolbox", "add", "a=1", env=env).stdout.strip() == "1"

        down = run("down", env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        output, _ = up.communicate(timeout=90)
        assert up.returncode == 0, output
        assert "stopped 1 actor(s)" in output
    finally:
        if up.poll() is None:
            up.kill()
