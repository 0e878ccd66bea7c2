"""Long-running jobs: event log throughput and crash recovery, each figure against raw Ray measured in the same run.

Run from the repository root (with the project's venv active):

    python bench/jobs.py                   # full run (~2.5 min on 2 quiet-ish cores), writes bench/results/jobs.json
    python bench/jobs.py --quick           # smaller jobs, 4 kills (a smoke run, about a minute)
    python bench/jobs.py --out /tmp/j.json

One local Ray (4 logical CPUs) holds both sides: a pool "bench" of two
``tests.kit:Toolbox`` actors (num_cpus=1, concurrency 10) and plain Ray
actors for the anchors.

1. One job: ``trials(n, interval=0)`` yields a progress and a trial event per
   trial (2n events; only its final trial checkpoints, so the figure is the event
   path). Logged: events / (job finished - submit). Streamed: events / (the
   reader thread iterating ``job.events()`` has them all - submit). Anchor: a raw
   Ray streaming-generator actor method yielding the same 2n small dicts to the
   driver. A second row runs the same job with a checkpoint after every trial
   (the op's default), against the same anchor.
2. Twenty concurrent jobs (20 reader threads), aggregate events/s, against 20
   concurrent raw generators on two raw actors (max_concurrency 10 each).
3. Recovery: SIGKILL the actor running ``trials(interval=0.02, checkpoint_every=1)``
   and poll ``job.status()`` every 10 ms until the job's attempts rose and its
   logged event count grows again. Each kill is checked: the job then succeeds
   with ``started_from > 0``, every trial once, every event seq once. Anchor: a
   raw generator on a killed actor, whose driver catches the death and restarts
   the generator on a second actor from the last item it got (time to that
   first new item). Context: "actor death -> replacement ready" from the pool's
   status events, against a raw ``max_restarts=-1`` actor answering a call after
   its SIGKILL.

Rates are the best of the repeats (raw and orchestrator alternate); recovery
times are p50 and max over the kills. Ratios are orchestrator / raw (for rates
higher is better, for times lower is better). The pool pings its actors every
0.5 s (health.period_s) so that status shows which actor runs the job.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.table import Table

# Run as `python bench/<name>.py` from the repository root: the test kit (tests.kit) must import here too.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402
from bench.common import machine, raw_restart, wait_until, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.dataplane.handles import Job  # noqa: E402

POOL = "bench"
POLL_S = 0.01  # job.status() polling period while waiting for recovery
HEALTH_PERIOD_S = 0.5  # ping period: status's per-actor "inflight" is at most this old
FINISHED = ("succeeded", "failed", "cancelled")


class Raw:
    """The anchor: the same events as Toolbox.trials, from a bare Ray actor."""

    def pid(self) -> int:
        return os.getpid()

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """2n small dicts shaped like a job's progress and trial events."""
        for t in range(n):
            yield {"progress": {"done": t + 1, "total": n}}
            yield {"trial": t}

    def trials(self, start: int, n: int, interval: float) -> Iterator[dict[str, int]]:
        """One event per trial from ``start`` (the driver's own checkpoint), ``interval`` apart."""
        for t in range(start, n):
            time.sleep(interval)
            yield {"trial": t}


def raw_class(**options: Any) -> Any:
    """``Raw`` as a Ray actor class with these ``ray.remote`` options."""
    decorator: Any = ray.remote
    return decorator(**options)(Raw)


def params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "single_n": 500,
            "checkpointed_n": 100,
            "concurrent_jobs": 20,
            "concurrent_n": 40,
            "single_repeats": 1,
            "concurrent_repeats": 1,
            "kills": 4,
            "recovery_n": 100,
            "recovery_interval": 0.02,
        }
    return {
        "single_n": 5000,
        "checkpointed_n": 1000,
        "concurrent_jobs": 20,
        "concurrent_n": 500,
        "single_repeats": 2,
        "concurrent_repeats": 1,  # ~45 s a run on 2 cores: one keeps the full run under 4 minutes
        "kills": 8,
        "recovery_n": 100,
        "recovery_interval": 0.02,
    }


def actors(orch: orchestrator.Orchestrator) -> list[dict[str, Any]]:
    return list(orch.status()[POOL]["actors"])


# ------------------------------------------------------------------ throughput
class Reader(threading.Thread):
    """Follows one job's event log; notes when it has every expected event and checks the seqs."""

    def __init__(self, job: Job, expected: int) -> None:
        super().__init__(daemon=True)
        self.job, self.expected = job, expected
        self.count = 0
        self.done_at: float | None = None  # perf_counter when the last expected event arrived
        self.error: str | None = None

    def run(self) -> None:
        try:
            for seq, _ in self.job.events():
                self.count += 1
                if seq != self.count and self.error is None:
                    self.error = f"job {self.job.id}: event seq {seq} where {self.count} was expected"
                if self.count == self.expected:
                    self.done_at = time.perf_counter()
        except Exception as exc:  # reported by the caller
            self.error = f"job {self.job.id}: reader failed: {exc!r}"


def orch_jobs(orch: orchestrator.Orchestrator, jobs: int, n: int, checkpoint_every: int) -> dict[str, float]:
    """Submit ``jobs`` trials jobs at once, each followed by its own reader; logged and streamed events/s."""
    expected = 2 * n
    t0, t0_wall = time.perf_counter(), time.time()
    readers = []
    for _ in range(jobs):
        job = orch.submit(POOL, "trials", n=n, interval=0.0, checkpoint_every=checkpoint_every)
        reader = Reader(job, expected)
        reader.start()
        readers.append(reader)
    for reader in readers:
        reader.join(timeout=600)
    records = [r.job.status() for r in readers]
    problems = [r.error for r in readers if r.error]
    problems += [f"job {r.job.id}: reader got {r.count}/{expected} events" for r in readers if r.count != expected]
    for record in records:
        if record["status"] != "succeeded" or record["events"] != expected:
            problems.append(f"job {record['id']}: {record['status']} with {record['events']}/{expected} events")
        elif record["result"] != {"total": sum(range(n)), "started_from": 0}:
            problems.append(f"job {record['id']}: unexpected result {record['result']}")
    if problems:
        raise RuntimeError("; ".join(problems[:5]))
    total = sum(record["events"] for record in records)
    logged_s = max(record["finished"] for record in records) - t0_wall
    streamed_s = max(r.done_at or 0.0 for r in readers) - t0
    return {"logged": total / logged_s, "streamed": total / streamed_s, "events": total, "seconds": streamed_s}


def raw_streams(raws: list[Any], streams: int, n: int) -> float:
    """``streams`` concurrent raw generators (spread over ``raws``), each consumed by its own thread; events/s."""
    counts = [0] * streams

    def consume(i: int) -> None:
        gen = raws[i % len(raws)].events.options(num_returns="streaming").remote(n)
        for ref in gen:
            ray.get(ref)
            counts[i] += 1

    start = time.perf_counter()
    if streams == 1:
        consume(0)
    else:
        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - start
    if sum(counts) != streams * 2 * n:
        raise RuntimeError(f"raw streams delivered {sum(counts)} of {streams * 2 * n} events")
    return sum(counts) / elapsed


def rate_rows(
    name: str, raw: list[float], logged: list[float], streamed: list[float], events: int
) -> list[dict[str, Any]]:
    r = max(raw)
    rows = []
    for label, runs in (("logged", logged), ("streamed to reader", streamed)):
        o = max(runs)
        rows.append(
            {
                "name": f"{name}: {label}",
                "unit": "events/s",
                "orchestrator": o,
                "raw": r,
                "ratio": o / r,
                "events": events,
                "runs": {"raw": raw, "orchestrator": runs},
            }
        )
    return rows


def measure_throughput(orch: orchestrator.Orchestrator, raws: list[Any], p: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    raw_streams(raws[:1], 1, 100)  # warm up both sides
    orch_jobs(orch, 1, 50, 50)

    n = p["single_n"]
    raw1: list[float] = []
    logged1: list[float] = []
    streamed1: list[float] = []
    for _ in range(p["single_repeats"]):
        raw1.append(raw_streams(raws[:1], 1, n))
        out = orch_jobs(orch, 1, n, checkpoint_every=n)
        logged1.append(out["logged"])
        streamed1.append(out["streamed"])
    rows += rate_rows("1 job", raw1, logged1, streamed1, 2 * n)

    nc = p["checkpointed_n"]
    out = orch_jobs(orch, 1, nc, checkpoint_every=1)
    rows += rate_rows("1 job, checkpoint every trial", raw1, [out["logged"]], [out["streamed"]], 2 * nc)

    jobs, nj = p["concurrent_jobs"], p["concurrent_n"]
    raw20: list[float] = []
    logged20: list[float] = []
    streamed20: list[float] = []
    for _ in range(p["concurrent_repeats"]):
        raw20.append(raw_streams(raws, jobs, nj))
        out = orch_jobs(orch, jobs, nj, checkpoint_every=nj)
        logged20.append(out["logged"])
        streamed20.append(out["streamed"])
    rows += rate_rows(f"{jobs} concurrent jobs", raw20, logged20, streamed20, jobs * 2 * nj)
    return rows


# -------------------------------------------------------------------- recovery
def next_name(name: str) -> str:
    """The actor name a slot gets after one more restart: bench-0 -> bench-0.1, bench-0.3 -> bench-0.4."""
    base, _, gen = name.partition(".")
    return f"{base}.{int(gen or 0) + 1}"


def orch_recovery(orch: orchestrator.Orchestrator, n: int, interval: float, killed: set[int]) -> dict[str, Any]:
    """Kill the actor running one job; time until the job logs new events again; verify it resumed."""
    wait_until(
        lambda: all(a["state"] == "ready" and a["pid"] not in killed | {None} for a in actors(orch)),
        timeout=60,
        what="every actor of the pool to be ready",
    )
    job = orch.submit(POOL, "trials", n=n, interval=interval, checkpoint_every=1)
    wait_until(lambda: job.status()["events"] >= 20, timeout=30, what="the job to log its first events")
    time.sleep(2.5 * HEALTH_PERIOD_S)  # every slot pinged since (a replacement too): its "inflight" is current
    running = wait_until(
        lambda: [a for a in actors(orch) if a["state"] == "ready" and a["inflight"]],
        timeout=10,
        what="the actor running the job",
    )
    if len(running) != 1:
        raise RuntimeError(f"expected one busy actor, status shows {running}")
    victim = running[0]
    before = job.status()
    if before["status"] != "running":
        raise RuntimeError(f"job {job.id} is {before['status']} before the kill (make recovery_n larger)")
    attempts0, seen = before["attempts"], before["events"]
    kill_wall = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    t_kill = time.perf_counter()
    killed.add(victim["pid"])
    recovered: float | None = None
    redispatched: float | None = None
    polls = 0
    while time.perf_counter() - t_kill < 60:
        record = job.status()
        now = time.perf_counter()
        polls += 1
        if record["attempts"] <= attempts0:
            seen = max(seen, record["events"])  # the dead attempt's last events (those Ray had already delivered)
        elif redispatched is None:
            redispatched = now - t_kill
        if record["attempts"] > attempts0 and record["events"] > seen:
            recovered = now - t_kill
            break
        if record["status"] in FINISHED:
            break
        time.sleep(POLL_S)
    result = job.result(timeout=120)
    record = job.status()
    events = list(job.events(follow=False))
    trials = [e["trial"] for _, e in events if "trial" in e]
    checks = {
        "recovered": recovered is not None,
        "attempts_rose": record["attempts"] > attempts0,
        "resumed_from_checkpoint": result.get("started_from", 0) > 0,
        "total_right": result.get("total") == sum(range(n)),
        "events_once": [seq for seq, _ in events] == list(range(1, 2 * n + 1)),
        "trials_once": trials == list(range(n)),
    }
    # The replacement: the slot's "died" event for the killed actor, then "ready" for its successor.
    replaced = wait_until(
        lambda: _replacement(orch, victim["name"], kill_wall), timeout=60, what="the killed actor's replacement"
    )
    return {
        "recovery_s": recovered,
        "redispatch_s": redispatched,
        "kill_to_replacement_ready_s": replaced["ready"] - kill_wall,
        "died_event_to_ready_s": replaced["ready"] - replaced["died"],
        "victim": victim["name"],
        "events_at_kill": before["events"],
        "attempts": record["attempts"],
        "started_from": result.get("started_from"),
        "polls": polls,
        "checks": checks,
        "ok": all(checks.values()),
    }


def _replacement(orch: orchestrator.Orchestrator, name: str, since: float) -> dict[str, float] | None:
    events = orch.status()[POOL]["events"]
    died = next((e["time"] for e in events if e["kind"] == "died" and e["actor"] == name and e["time"] >= since), None)
    successor = next_name(name)
    ready = next((e["time"] for e in events if e["kind"] == "ready" and e["actor"] == successor), None)
    return None if died is None or ready is None else {"died": died, "ready": ready}


def raw_failover(actor_cls: Any, spare: Any, n: int, interval: float) -> float:
    """A raw generator on an actor that is SIGKILLed; the driver restarts it on ``spare`` from its last item."""
    victim = actor_cls.remote()
    pid = ray.get(victim.pid.remote())
    gen = victim.trials.options(num_returns="streaming").remote(0, n, interval)
    last = -1
    for ref in gen:
        last = ray.get(ref)["trial"]
        if last >= 20:
            break
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    try:
        for ref in gen:  # events Ray delivered before the death, then the error
            last = ray.get(ref)["trial"]
    except RayError:
        pass
    again = spare.trials.options(num_returns="streaming").remote(last + 1, last + 2, interval)
    first = ray.get(next(again))
    elapsed = time.perf_counter() - start
    if first != {"trial": last + 1}:
        raise RuntimeError(f"raw failover resumed at {first}, expected trial {last + 1}")
    return elapsed


def measure_recovery(orch: orchestrator.Orchestrator, p: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raw_cls = raw_class(num_cpus=0.5)
    spare = raw_cls.remote()
    restartable = raw_class(num_cpus=0.5, max_restarts=-1).remote()
    ray.get([spare.pid.remote(), restartable.pid.remote()])
    orch_runs: list[dict[str, Any]] = []
    failover: list[float] = []
    restart: list[float] = []
    killed: set[int] = set()
    for _ in range(p["kills"]):  # alternate sides, one kill each per round
        orch_runs.append(orch_recovery(orch, p["recovery_n"], p["recovery_interval"], killed))
        failover.append(raw_failover(raw_cls, spare, p["recovery_n"], p["recovery_interval"]))
        restart.append(raw_restart(restartable))
    ray.kill(spare)
    ray.kill(restartable)
    failed = [run for run in orch_runs if not run["ok"]]
    recovery = [run["recovery_s"] for run in orch_runs if run["recovery_s"] is not None]
    replaced = [run["kill_to_replacement_ready_s"] for run in orch_runs]
    rows = []
    for name, orch_s, raw_s in (
        ("kill -> job running again from checkpoint", recovery, failover),
        ("kill -> replacement actor ready (status)", replaced, restart),
    ):
        for label, stat in (("p50", statistics.median), ("max", max)):
            o, r = stat(orch_s) * 1e3, stat(raw_s) * 1e3
            rows.append(
                {
                    "name": f"{name} {label}",
                    "unit": "ms",
                    "orchestrator": o,
                    "raw": r,
                    "ratio": o / r,
                    "runs": {"raw": raw_s, "orchestrator": orch_s},
                }
            )
    detail = {
        "kills": orch_runs,
        "all_verified": not failed,
        "died_event_to_ready_s": [run["died_event_to_ready_s"] for run in orch_runs],
        "raw_failover_s": failover,
        "raw_restart_s": restart,
    }
    return rows, detail


# ------------------------------------------------------------------------- run
def measure(p: dict[str, Any], state_dir: Path, namespace: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    config = parse_config(
        {
            "ray": {"namespace": namespace},
            "state_dir": str(state_dir),
            "pools": {
                POOL: {
                    "worker": "tests.kit:Toolbox",
                    "size": 2,
                    "resources": {"num_cpus": 1},
                    "limits": {"concurrency": 10},
                    "restart": {"max_restarts": 100},
                    "health": {"period_s": HEALTH_PERIOD_S},
                }
            },
        },
        source="bench/jobs.py",
        base_dir=state_dir,
    )
    mark = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()

    orch = orchestrator.start(config)
    lap("start_s")
    try:
        raws = [raw_class(num_cpus=1, max_concurrency=10).remote() for _ in range(2)]
        ray.get([raw.pid.remote() for raw in raws])
        rows = measure_throughput(orch, raws, p)
        lap("throughput_s")
        for raw in raws:
            ray.kill(raw)
        recovery_rows, detail = measure_recovery(orch, p)
        rows += recovery_rows
        lap("recovery_s")
    finally:
        orch.shutdown(drain_s=5.0)
    lap("shutdown_s")
    detail["phases"] = phases
    return rows, detail


def show(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="jobs: orchestrator vs raw Ray (ratio = orchestrator / raw)")
    for column in ("measure", "unit", "orchestrator", "raw anchor", "ratio"):
        table.add_column(column, justify="left" if column in ("measure", "unit") else "right")
    for row in rows:
        table.add_row(
            row["name"], row["unit"], f"{row['orchestrator']:,.1f}", f"{row['raw']:,.1f}", f"{row['ratio']:.2f}"
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller jobs and fewer kills (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "jobs.json")
    args = parser.parse_args()
    p = params(args.quick)
    console = Console(width=None if sys.stdout.isatty() else 120)  # don't wrap the table when piped
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            rows, recovery = measure(p, Path(tmp), namespace)
    finally:
        ray.shutdown()
    show(rows, console)
    if not recovery["all_verified"]:
        bad = [run for run in recovery["kills"] if not run["ok"]]
        console.print(f"[red]{len(bad)} kill(s) not verified:[/] {[run['checks'] for run in bad]}")
    report = {
        "benchmark": "jobs",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": time.perf_counter() - started,
        "machine": machine(ray_num_cpus=4, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "params": p,
        "pool": "bench: 2 x tests.kit:Toolbox, num_cpus 1, concurrency 10, max_restarts 100, health 0.5 s",
        "anchors": {
            "events": "plain @ray.remote(num_cpus=1, max_concurrency=10) actor generator (no backpressure), "
            "same 2n dicts, consumed by the driver (one thread per stream)",
            "recovery": "raw generator on a SIGKILLed actor; the driver catches the error and restarts it on a "
            "spare actor from its last item; time to the first new item",
            "replacement": "raw @ray.remote(max_restarts=-1) actor SIGKILLed; time until a call answers from the "
            "new process",
        },
        "results": rows,
        "recovery": recovery,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
