"""Fault recovery: the coordinator's SIGKILL, a session actor's SIGKILL, the loss of a node; each against an anchor.

Run from the repository root (with the project's venv active and the bench extra
installed: ``pip install -e ".[bench]"``, which adds ``ray[serve]``):

    python bench/faults.py                 # full run (~3 min on 2 cores), writes bench/results/faults.json
    python bench/faults.py --quick         # one kill of each, shorter windows (a smoke run, about a minute)
    python bench/faults.py --out /tmp/f.json

One local Ray (4 logical CPUs) holds parts 1 and 2, one side at a time (Ray
Serve is torn down before the orchestrator starts); part 3 runs in a child
process (``python bench/faults.py --node-loss``, one JSON line out) with a
multi-node Ray of its own, after the first Ray is shut down.

1. Coordinator SIGKILL. A pool "p" of two ``tests.kit:Toolbox`` actors
   (num_cpus 0.25, health ping every 0.5 s); a thread calls
   ``orch.call("p", "echo", value=i)`` back to back (20 ms apart). The
   coordinator's process is SIGKILLed; measured: kill -> ``orch.status()``
   answers (Ray restarts the coordinator, which adopts the live actors, and
   retries the call), and the stateless calls that ended within the window
   after the kill (15 s; failed / total, and the slowest one). Each kill is
   checked: the coordinator's pid changed, the pool actors' pids did not.
   Anchor: Ray Serve's controller, SIGKILLed the same way, with a deployment of
   two replicas called through a DeploymentHandle by the same kind of thread;
   kill -> ``serve.status()`` answers, and its calls in the same window.
2. Session actor SIGKILL. A pool "s" of two Toolbox actors with after-call
   checkpoints; one session counts with ``incr``. Its actor is SIGKILLed;
   measured (status polled every 10 ms): kill -> the slot is "ready" with a new
   pid, and ready -> the first ``session.call("incr", by=1)`` that succeeds
   (retried on errors). Each kill is checked: the counter continues (state
   restored from the checkpoint). Anchor: a raw ``max_restarts=-1`` Ray actor
   answering a call after its SIGKILL (kills alternate between the two).
3. Node loss. ``ray.cluster_utils.Cluster``: a head with no CPUs (the
   coordinator and its store) and two worker nodes of 2 CPUs; a pool of two
   actors (num_cpus 1). The node holding actor 0 is removed (its processes
   killed; gracefully, and in the full run a second time without the grace,
   after a fresh node joins); measured: removal -> every actor of the pool
   "ready" on a surviving node. No anchor. When Ray itself marked the node
   dead (``ray.nodes()``, polled up to 90 s) is noted beside it in the report
   (without the grace that took ~13 s on 2 cores, against ~3.5 s for the pool).

Times are p50 and max over the kills. Ratios are orchestrator / anchor (lower
is better). The goals are the issue's: control plane back within 2 s, no failed
stateless call, a session answering within 1 s of its actor's replacement being
ready.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

# Run as `python bench/<name>.py` from the repository root: the test kit (tests.kit) must import here too.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402
from bench.common import machine, raw_restart, wait_until, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from tests.kit.clusters import reporting  # noqa: E402

CONTROL_PLANE_GOAL_S = 2.0  # kill of the coordinator -> status answers
FAILED_CALLS_GOAL = 0  # stateless calls failed after a coordinator kill
SESSION_GOAL_S = 1.0  # replacement ready -> the session answers
HEALTH_PERIOD_S = 0.5
CALL_GAP_S = 0.02  # the caller threads' pause between calls
POLL_S = 0.01  # status polling while waiting for a replacement
RAY_NUM_CPUS = 4


def params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"coordinator_kills": 1, "serve_kills": 1, "window_s": 10.0, "session_kills": 2, "node_removals": 1}
    return {"coordinator_kills": 3, "serve_kills": 3, "window_s": 15.0, "session_kills": 5, "node_removals": 2}


def pid_of(handle: Any) -> int:
    """The process id of a Ray actor (any actor: runs a function on it with ``__ray_call__``)."""
    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60))


# --------------------------------------------------------------- the caller thread
@dataclass
class CallRecord:
    start: float  # perf_counter
    end: float
    ok: bool
    error: str = ""


@dataclass
class Caller:
    """Calls ``fn(i)`` back to back in a thread (``CALL_GAP_S`` apart); records every call."""

    fn: Callable[[int], Any]
    records: list[CallRecord] = field(default_factory=list)
    answered_by: set[Any] = field(default_factory=set)  # what identifies the process that answered, if known
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Caller:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                answer = self.fn(i)
                self.records.append(CallRecord(start, time.perf_counter(), True))
                if answer is not None:
                    self.answered_by.add(answer)
            except Exception as exc:  # counted, not raised: the thread keeps calling
                self.records.append(CallRecord(start, time.perf_counter(), False, f"{type(exc).__name__}: {exc}"))
            i += 1
            time.sleep(CALL_GAP_S)

    def window(self, since: float, seconds: float) -> dict[str, Any]:
        """The calls that ended within ``seconds`` after ``since`` (a perf_counter)."""
        calls = [r for r in list(self.records) if since <= r.end < since + seconds]
        failed = [r for r in calls if not r.ok]
        return {
            "calls": len(calls),
            "failed": len(failed),
            "in_flight_at_kill": sum(1 for r in calls if r.start < since),
            "slowest_s": max((r.end - r.start for r in calls), default=0.0),
            "errors": sorted({r.error for r in failed})[:5],
        }


def settle(since: float, seconds: float) -> None:
    """Sleep until ``seconds`` after ``since`` (a perf_counter)."""
    time.sleep(max(0.0, since + seconds - time.perf_counter()))


# --------------------------------------------------------------- 1. the anchor: Serve's controller
def serve_controller_kills(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Deploy two replicas, call them continuously, SIGKILL Serve's controller; per kill what was seen."""
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.25}, logging_config={"enable_access_log": False})
    class Echo:
        def __call__(self, value: int) -> tuple[int, int]:
            return value, os.getpid()

    app: Any = Echo  # serve.deployment returns a Deployment (with .bind()); its stubs say the class
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    handle = serve.run(app.bind(), name="faults", route_prefix=None)

    def call(i: int) -> int:
        value, pid = handle.remote(i).result(timeout_s=60)
        if value != i:
            raise RuntimeError(f"echo({i}) answered {value}")
        return int(pid)

    runs = []
    try:
        for _ in range(5):  # warm up the handle's router
            call(0)
        with Caller(call) as caller:
            wait_until(lambda: len(caller.answered_by) == 2, timeout=30, what="calls to reach both replicas")
            for _ in range(p["serve_kills"]):
                replicas = set(caller.answered_by)
                controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
                old = pid_of(controller)
                os.kill(old, signal.SIGKILL)
                killed = time.perf_counter()
                serve.status()  # answered once Ray has restarted the controller (calls are retried)
                answered = time.perf_counter() - killed
                new = pid_of(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE))
                settle(killed, p["window_s"])
                window = caller.window(killed, p["window_s"])
                checks = {
                    "controller_pid_changed": new != old,
                    "replica_pids_unchanged": caller.answered_by == replicas,
                    "calls_made": window["calls"] > 0,
                }
                runs.append({"status_s": answered, **window, "checks": checks, "ok": all(checks.values())})
    finally:
        serve.shutdown()
    return runs


# --------------------------------------------------------------- 1. the coordinator
def pool_actors(orch: orchestrator.Orchestrator, pool: str) -> list[dict[str, Any]]:
    return list(orch.status()[pool]["actors"])


def all_ready(orch: orchestrator.Orchestrator, pool: str) -> list[dict[str, Any]] | None:
    actors = pool_actors(orch, pool)
    return actors if all(a["state"] == "ready" and a["pid"] for a in actors) else None


def coordinator_kills(orch: orchestrator.Orchestrator, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Stateless calls in a thread; SIGKILL the coordinator; per kill what was seen."""

    def call(i: int) -> None:
        if orch.call("p", "echo", value=i) != i:
            raise RuntimeError(f"echo({i}) answered something else")

    runs = []
    with Caller(call) as caller:
        wait_until(lambda: len(caller.records) > 20, timeout=30, what="the stateless calls to run")
        for _ in range(p["coordinator_kills"]):
            before = wait_until(lambda: all_ready(orch, "p"), timeout=60, what="pool p to be ready")
            pids = sorted(a["pid"] for a in before)
            old = pid_of(orch.coordinator)
            os.kill(old, signal.SIGKILL)
            killed = time.perf_counter()
            orch.status()  # held by Ray until the restarted coordinator answers
            answered = time.perf_counter() - killed
            new = pid_of(orch.coordinator)
            after = wait_until(lambda: all_ready(orch, "p"), timeout=60, what="pool p to be ready after the kill")
            adopted = time.perf_counter() - killed
            settle(killed, p["window_s"])
            window = caller.window(killed, p["window_s"])
            checks = {
                "coordinator_pid_changed": new != old,
                "pool_pids_unchanged": sorted(a["pid"] for a in after) == pids,
                "calls_made": window["calls"] > 0,
            }
            runs.append(
                {"status_s": answered, "pool_ready_s": adopted, **window, "checks": checks, "ok": all(checks.values())}
            )
    return runs


# --------------------------------------------------------------- 2. a session's actor
class Raw:
    """The anchor: a bare restartable Ray actor."""

    def pid(self) -> int:
        return os.getpid()


def session_kill(orch: orchestrator.Orchestrator, session: orchestrator.Session) -> dict[str, Any]:
    """SIGKILL a session's actor; time until its slot is ready again and until the session answers."""
    wait_until(lambda: all_ready(orch, "s"), timeout=60, what="pool s to be ready")
    value = session.call("incr", by=1)
    victim = pool_actors(orch, "s")[session.slot]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.perf_counter()
    polls = 0
    while True:
        slot = pool_actors(orch, "s")[session.slot]
        polls += 1
        if slot["state"] == "ready" and slot["pid"] not in (victim, None):
            break
        if time.perf_counter() - killed > 60:
            raise RuntimeError(f"slot {session.slot} of pool s not replaced within 60s: {slot}")
        time.sleep(POLL_S)
    ready = time.perf_counter()
    errors: list[str] = []
    while True:
        try:
            after = session.call("incr", by=1)
            break
        except Exception as exc:  # counted; the session is called again until it answers
            errors.append(f"{type(exc).__name__}: {exc}")
            if time.perf_counter() - ready > 60:
                raise RuntimeError(f"the session did not answer within 60s of its replacement: {errors[-3:]}") from exc
            time.sleep(POLL_S)
    answered = time.perf_counter()
    checks = {"state_restored": after == value + 1, "pid_changed": slot["pid"] != victim}
    return {
        "kill_to_ready_s": ready - killed,
        "ready_to_answer_s": answered - ready,
        "kill_to_answer_s": answered - killed,
        "value_before": value,
        "value_after": after,
        "errors_before_answer": len(errors),
        "errors": sorted(set(errors))[:5],
        "polls": polls,
        "checks": checks,
        "ok": all(checks.values()),
    }


def session_kills(orch: orchestrator.Orchestrator, p: dict[str, Any]) -> tuple[list[dict[str, Any]], list[float]]:
    restartable: Any = ray.remote(num_cpus=0.25, max_restarts=-1)(Raw).remote()
    ray.get(restartable.pid.remote())
    runs: list[dict[str, Any]] = []
    raw: list[float] = []
    with orch.session("s") as session:
        for _ in range(p["session_kills"]):  # alternate sides, one kill each per round
            runs.append(session_kill(orch, session))
            raw.append(raw_restart(restartable))
    ray.kill(restartable)
    return runs, raw


def measure_local(p: dict[str, Any], state_dir: Path, namespace: str) -> dict[str, Any]:
    """Parts 1 and 2 on this process's Ray: Serve first (then torn down), then the orchestrator."""
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()

    serve_runs = serve_controller_kills(p)
    lap("serve_s")
    health = {"period_s": HEALTH_PERIOD_S, "timeout_s": 5.0}
    config = parse_config(
        {
            "ray": {"namespace": namespace},
            "state_dir": str(state_dir),
            "pools": {
                "p": {"worker": "tests.kit:Toolbox", "size": 2, "resources": {"num_cpus": 0.25}, "health": health},
                "s": {
                    "worker": "tests.kit:Toolbox",
                    "size": 2,
                    "resources": {"num_cpus": 0.25},
                    "health": health,
                    "restart": {"max_restarts": 100},
                    "sessions": {"checkpoint": "after_call"},
                },
            },
        },
        source="bench/faults.py",
        base_dir=ROOT,
    )
    orch = orchestrator.start(config)
    lap("orchestrator_start_s")
    try:
        coordinator_runs = coordinator_kills(orch, p)
        lap("coordinator_s")
        session_runs, raw_restarts = session_kills(orch, p)
        lap("sessions_s")
    finally:
        orch.shutdown(drain_s=5.0)
    lap("shutdown_s")
    return {
        "serve_controller": serve_runs,
        "coordinator": coordinator_runs,
        "sessions": session_runs,
        "raw_restart_s": raw_restarts,
        "phases": phases,
    }


# --------------------------------------------------------------- 3. node loss (child process)
def node_loss(removals: int) -> None:
    """In its own process: a multi-node Ray; remove the node of actor 0 ``removals`` times; print one JSON line."""
    from ray.cluster_utils import Cluster

    namespace = f"faults-node-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"removals": []}
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    out["cluster_start_s"] = time.perf_counter() - started
    pool = {
        "worker": "tests.kit:Toolbox",
        "size": 2,
        "resources": {"num_cpus": 1},
        "health": {"period_s": HEALTH_PERIOD_S, "timeout_s": 5.0},
    }
    config = {
        "ray": {"namespace": namespace, "address": cluster.address},
        "state_dir": tempfile.mkdtemp(prefix="faults-node-"),
        "pools": {"p": pool},
    }
    orch = orchestrator.start(parse_config(config, base_dir=ROOT))
    with reporting(out, orch, cluster):
        try:
            for n in range(removals):
                graceful = n == 0
                if n > 0:
                    workers.append(cluster.add_node(num_cpus=2))
                    cluster.wait_for_nodes()
                actors = wait_until(lambda: all_ready(orch, "p"), timeout=120, what="pool p to be ready")
                doomed = next(node for node in workers if node.node_id == actors[0]["node_id"])
                on_doomed = sum(1 for a in actors if a["node_id"] == doomed.node_id)
                workers.remove(doomed)
                removing = time.perf_counter()
                cluster.remove_node(doomed, allow_graceful=graceful)
                removed = time.perf_counter()
                ray_dead: float | None = None
                full: float | None = None
                while time.perf_counter() - removed < 120:
                    now = time.perf_counter()
                    if ray_dead is None and any(
                        node["NodeID"] == doomed.node_id and not node["Alive"] for node in ray.nodes()
                    ):
                        ray_dead = now - removed
                    actors = pool_actors(orch, "p")
                    if all(a["state"] == "ready" and a["node_id"] not in (doomed.node_id, None) for a in actors):
                        full = now - removed
                        break
                    time.sleep(0.05)
                while ray_dead is None and time.perf_counter() - removed < 90:  # for the record: when Ray noticed
                    if any(node["NodeID"] == doomed.node_id and not node["Alive"] for node in ray.nodes()):
                        ray_dead = time.perf_counter() - removed
                    time.sleep(0.1)
                out["removals"].append(
                    {
                        "graceful": graceful,
                        "actors_on_removed_node": on_doomed,
                        "remove_node_call_s": removed - removing,
                        "removed_to_full_s": full,
                        "ray_marked_node_dead_s": ray_dead,
                        "pool": [{"state": a["state"], "restarts": a["restarts"]} for a in actors],
                        "ok": full is not None,
                    }
                )
        finally:
            out["total_s"] = time.perf_counter() - started


def run_node_loss(p: dict[str, Any]) -> dict[str, Any]:
    """Part 3 in a child process (its own multi-node Ray)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, str(Path(__file__).resolve()), "--node-loss", str(p["node_removals"])]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the node-loss run printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------- report
def stat_row(
    name: str,
    orch: list[float],
    anchor: list[float] | None,
    anchor_name: str,
    goal: tuple[str, Callable[[float], bool]] | None = None,
    unit: str = "ms",
    scale: float = 1e3,
) -> list[dict[str, Any]]:
    """p50 and max rows of a time (orchestrator / anchor); the goal is judged on the max."""
    rows = []
    for label, stat in (("p50", statistics.median), ("max", max)):
        o = stat(orch) * scale
        a = stat(anchor) * scale if anchor else None
        rows.append(
            {
                "name": f"{name} {label}",
                "unit": unit,
                "orchestrator": o,
                "anchor": a,
                "anchor_name": anchor_name,
                "ratio": o / a if a else None,
                "goal": goal[0] if goal else "",
                "meets": goal[1](o / scale) if goal and label == "max" else None,
                "runs": {"orchestrator": orch, "anchor": anchor},
            }
        )
    return rows


def build_rows(local: dict[str, Any], nodes: dict[str, Any]) -> list[dict[str, Any]]:
    coord, serve = local["coordinator"], local["serve_controller"]
    rows = stat_row(
        "coordinator SIGKILL -> status answers",
        [r["status_s"] for r in coord],
        [r["status_s"] for r in serve],
        "Serve controller",
        (f"<= {CONTROL_PLANE_GOAL_S:g} s", lambda s: s <= CONTROL_PLANE_GOAL_S),
    )
    failed, total = sum(r["failed"] for r in coord), sum(r["calls"] for r in coord)
    serve_failed, serve_total = sum(r["failed"] for r in serve), sum(r["calls"] for r in serve)
    rows.append(
        {
            "name": "stateless calls failed after the kill (all kills)",
            "unit": "failed/total",
            "orchestrator": f"{failed}/{total}",
            "anchor": f"{serve_failed}/{serve_total}",
            "anchor_name": "Serve controller",
            "ratio": None,
            "goal": f"{FAILED_CALLS_GOAL}",
            "meets": failed <= FAILED_CALLS_GOAL,
        }
    )
    rows += stat_row(
        "slowest stateless call after the kill",
        [r["slowest_s"] for r in coord],
        [r["slowest_s"] for r in serve],
        "Serve controller",
    )[1:]  # the max only
    sessions = local["sessions"]
    raw = local["raw_restart_s"]
    rows += stat_row(
        "session actor SIGKILL -> replacement ready", [r["kill_to_ready_s"] for r in sessions], raw, "raw actor restart"
    )
    rows += stat_row(
        "replacement ready -> session answers",
        [r["ready_to_answer_s"] for r in sessions],
        None,
        "none",
        (f"<= {SESSION_GOAL_S:g} s", lambda s: s <= SESSION_GOAL_S),
    )
    rows += stat_row(
        "session actor SIGKILL -> session answers", [r["kill_to_answer_s"] for r in sessions], raw, "raw actor restart"
    )
    for removal in nodes.get("removals", []):
        how = "gracefully" if removal["graceful"] else "killed"
        full = removal["removed_to_full_s"]
        rows.append(
            {
                "name": f"node removed ({how}) -> pool at full size",
                "unit": "s",
                "orchestrator": full if full is not None else float("nan"),
                "anchor": None,
                "anchor_name": "none",
                "ratio": None,
                "goal": "",
                "meets": None if full is not None else False,
            }
        )
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def show(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="fault recovery: orchestrator vs anchor (ratio = orchestrator / anchor; lower is better)")
    for column in ("measure", "unit", "orchestrator", "anchor", "anchor is", "ratio", "goal", "verdict"):
        table.add_column(column, justify="left" if column in ("measure", "unit", "anchor is", "verdict") else "right")
    for row in rows:
        verdict = {True: "[green]meets goal[/]", False: "[red]misses goal[/]", None: ""}[row["meets"]]
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        table.add_row(
            row["name"],
            row["unit"],
            fmt(row["orchestrator"]),
            fmt(row["anchor"]),
            row["anchor_name"],
            ratio,
            row["goal"],
            verdict,
        )
    console.print(table)


def unverified(local: dict[str, Any], nodes: dict[str, Any]) -> list[str]:
    """What a kill did not show that it should have (a kill that did not happen, state not restored, ...)."""
    problems = []
    for part in ("serve_controller", "coordinator", "sessions"):
        for i, run in enumerate(local[part]):
            if not run["ok"]:
                problems.append(f"{part} kill {i + 1}: {[k for k, v in run['checks'].items() if not v]}")
    for i, removal in enumerate(nodes.get("removals", [])):
        if not removal["ok"]:
            problems.append(f"node removal {i + 1}: the pool was not back to full size within 120 s")
    if "error" in nodes:
        problems.append(f"node loss: {nodes['error']}")
    return problems


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--node-loss":  # the child process of part 3
        node_loss(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one kill of each, shorter windows (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "faults.json")
    args = parser.parse_args()
    p = params(args.quick)
    console = Console(width=None if sys.stdout.isatty() else 150)  # don't wrap the table when piped
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=RAY_NUM_CPUS, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            local = measure_local(p, Path(tmp), namespace)
    finally:
        ray.shutdown()
    mark = time.perf_counter()
    try:
        nodes = run_node_loss(p)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        nodes = {"error": str(exc)[-3000:], "removals": []}
    local["phases"]["node_loss_s"] = round(time.perf_counter() - mark, 2)
    rows = build_rows(local, nodes)
    show(rows, console)
    problems = unverified(local, nodes)
    for problem in problems:
        console.print(f"[red]not verified:[/] {problem}")
    report = {
        "benchmark": "faults",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": time.perf_counter() - started,
        "machine": machine(ray_num_cpus=RAY_NUM_CPUS, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "params": p,
        "goals": {
            "control_plane_back_s_max": CONTROL_PLANE_GOAL_S,
            "failed_stateless_calls_max": FAILED_CALLS_GOAL,
            "session_answers_after_ready_s_max": SESSION_GOAL_S,
        },
        "pools": {
            "p": "2 x tests.kit:Toolbox, num_cpus 0.25, health 0.5 s (stateless echo calls, 20 ms apart)",
            "s": "2 x tests.kit:Toolbox, num_cpus 0.25, health 0.5 s, sessions checkpoint after_call",
            "node loss": "2 x tests.kit:Toolbox, num_cpus 1, on 2 worker nodes of 2 CPUs (head: 0 CPUs)",
        },
        "anchors": {
            "control plane": "Ray Serve (proxy disabled), a deployment of 2 replicas (num_cpus 0.25) called through "
            "a DeploymentHandle by the same caller thread; its controller SIGKILLed; serve.status() timed",
            "replacement": "raw @ray.remote(num_cpus=0.25, max_restarts=-1) actor SIGKILLed; time until a call "
            "answers from the new process",
            "node loss": "none",
        },
        "results": rows,
        "detail": {**local, "node_loss": nodes},
        "not_verified": problems,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out} in {report['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
