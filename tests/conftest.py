"""One local Ray per test session; each test module starts its own orchestrator in its own namespace."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import orchestrator
from orchestrator.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray with room for many small actors and two logical GPUs."""
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # metrics reach the export port within ~1 s
    ray.init(num_cpus=16, num_gpus=2, include_dashboard=False, log_to_driver=False, namespace="tests")
    yield
    ray.shutdown()


Start = Callable[..., orchestrator.Orchestrator]


@pytest.fixture(scope="module")
def start_orchestrator(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    """Start orchestrators from a ``pools`` mapping; all are shut down when the module ends."""
    started: list[orchestrator.Orchestrator] = []

    def start(pools: dict[str, Any], base_dir: Path = ROOT, **top: Any) -> orchestrator.Orchestrator:
        data = {
            "ray": {"namespace": f"t-{uuid.uuid4().hex[:8]}"},
            "state_dir": str(tmp_path_factory.mktemp("state")),
            "pools": pools,
            **top,
        }
        orch = orchestrator.start(parse_config(data, base_dir=base_dir))
        started.append(orch)
        return orch

    yield start
    for orch in started:
        with contextlib.suppress(Exception):  # already shut down by the test
            orch.shutdown(drain_s=1.0)


def retrieval_pool() -> dict[str, Any]:
    """A one-actor retrieval pool in this venv on the offline MiniLM (room for corpus_build's pool-wide load)."""
    return {
        "worker": "workers.retrieval:Retrieval",
        "env_manager": "none",
        "resources": {"num_cpus": 0.25},
        "limits": {"concurrency": 4},
        "options": {"device": "cpu", "threads": 1},
        "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }


def heavy_pool(model: str = "oracle/oracle", **overrides: Any) -> dict[str, Any]:
    """A one-actor heavy pool in this venv whose task model is ``model`` (the oracle by default)."""
    pool = {"worker": "workers.heavy:Heavy", "env_manager": "none", "resources": {"num_cpus": 0.25}}
    return {**pool, "options": {"model": model}, **overrides}


def toolbox(size: int = 1, **overrides: Any) -> dict[str, Any]:
    """A Toolbox pool spec with small resources."""
    spec: dict[str, Any] = {
        "worker": "tests.kit:Toolbox",
        "size": size,
        "resources": {"num_cpus": 0.25},
        "health": {"period_s": 0.5, "timeout_s": 5.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def up_config(folder: Path, namespace: str, port: int, sessions: str = "") -> Path:
    """A pools.yaml for `orchestrator up` in a subprocess: one small toolbox pool, state in ``folder``."""
    config = folder / "pools.yaml"
    config.write_text(
        f"""
ray: {{namespace: {namespace}, num_cpus: 4}}
state_dir: {folder / "state"}
gateway: {{port: {port}}}
pools:
  toolbox:
    worker: tests.kit:Toolbox
    size: 1
    resources: {{num_cpus: 0.5}}
{f"    sessions: {{{sessions}}}" if sessions else ""}
"""
    )
    return config


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def actors(orch: orchestrator.Orchestrator, pool: str) -> list[dict[str, Any]]:
    """The pool's actor slots as status reports them."""
    return list(orch.status()[pool]["actors"])


def coordinator_pid(orch: orchestrator.Orchestrator) -> int:
    """The coordinator actor's process id."""
    return int(ray.get(orch.coordinator.__ray_call__.remote(lambda self: os.getpid())))


def kill_pid(pid: int) -> None:
    """SIGKILL a process, as the kernel's OOM killer would."""
    os.kill(pid, signal.SIGKILL)


def kill_and_wait_restart(orch: orchestrator.Orchestrator, pool: str, pid: int) -> None:
    """SIGKILL an actor and wait until the coordinator has replaced it."""
    kill_pid(pid)
    wait_until(
        lambda: all(a["state"] == "ready" and a["pid"] not in (pid, None) for a in actors(orch, pool)),
        what=f"pool {pool} to replace actor pid {pid}",
    )


def events_killing_once(
    orch: orchestrator.Orchestrator, job: orchestrator.Job, pool: str, when: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict[str, Any]], int]:
    """Follow a job's events to its end, SIGKILLing the pool's (first) actor once, right after the first
    event ``when`` accepts (an event the re-run logs again does not kill twice); returns the events and the
    killed pid."""
    pid = actors(orch, pool)[0]["pid"]
    events: list[dict[str, Any]] = []
    killed = False
    for _, event in job.events():
        events.append(event)
        if not killed and when(event):
            killed = True
            kill_and_wait_restart(orch, pool, pid)
    assert killed, "the job ended before the event to kill at"
    return events, pid


LINE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape() -> str:
    """The local node's metrics export (what Prometheus scrapes), as text."""
    import httpx

    port = ray._private.worker.global_worker.node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the series ``name`` whose labels include ``labels`` (over workers and nodes)."""
    total = 0.0
    for line in text.splitlines():
        match = LINE.match(line)
        if match and match.group(1) == name:
            found = dict(LABEL.findall(match.group(2)))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total


def log_lines(marker: str, count: int = 1, timeout: float = 30.0) -> list[str]:
    """The pool actors' log lines (Ray's worker log files) holding ``marker``, once there are ``count``."""
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"

    def lines() -> list[str] | None:
        found = [
            line
            for path in logs.glob("worker-*")
            for line in path.read_text(errors="replace").splitlines()
            if marker in line
        ]
        return found if len(found) >= count else None

    return list(wait_until(lines, timeout=timeout, what=f"log lines holding {marker!r} in the actors' log files"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``orchestrator gateway`` in a subprocess (a real uvicorn) against an orchestrator on the test Ray."""

    def __init__(
        self, namespace: str, token: str | None = None, extra: list[str] | None = None, port: int | None = None
    ) -> None:
        import subprocess
        import sys

        import httpx

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_TOKEN"}
        if token:
            env["ORCHESTRATOR_TOKEN"] = token
        address = ray.get_runtime_context().gcs_address
        command = [sys.executable, "-m", "orchestrator", "gateway", "--address", address, "--namespace", namespace]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *(extra or [])],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise AssertionError(f"gateway exited with {self.process.returncode}: {output}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="gateway to answer /healthz")

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()
