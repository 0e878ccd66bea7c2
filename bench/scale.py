"""The control plane's cost as history grows: the same operations on an empty store and on one holding
100k finished jobs (with their events), 10k closed sessions and 1k files, with many sessions open.

Run from the repository root (with the project's venv active):

    python bench/scale.py            # 100k jobs, 10k closed sessions, 1k files, 1k open sessions
    python bench/scale.py --quick    # 20k jobs, 2k closed sessions, 200 files, 200 open sessions

One local Ray (4 logical CPUs). Each side is an in-process orchestrator with the ``demo`` pool (one actor,
num_cpus 0.25, sessions checkpointed ``after_call``) on its own ``state_dir``: ``empty``, and ``full``,
whose store is filled directly (SQLite rows and file bytes, as the store writes them) before it starts;
both run at once and get the same open sessions and 100 recent jobs. Each operation is timed on the two
sides in turn, three rounds in alternating order (the best p50 of each side): a job submit, a job's
status, the first page (100) of the job listing, opening a session, a session call (checkpointed after
the call) and one that changes nothing (nothing to store) next to a plain call, ``status()``; the
coordinator's RSS and what each open session adds to it; 1,000 trivial jobs (``trials n=1``) submitted at
once (``submit_many``, then ``wait``) until the last has finished, against raw Ray tasks doing the same work
(warmed, in the same rounds), and, for context, bare Ray streaming actor calls (the path each job takes: one
streaming call on an actor, 16 in flight); and the coordinator's boot (SIGKILL, then until it answers again).
Goals (issue "The control plane's cost stays flat"): full / empty <= 1.25 for each operation, RSS <= 1.1x,
<= 4 KB per open session, boot <= 2 s, a checkpointed session call <= 2x a plain call, trivial jobs >= 0.5x
raw Ray tasks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.control.store import Store  # noqa: E402
from tests.kit.history import finished_jobs  # noqa: E402

RATIO_GOAL = 1.25
TRIES = 40
ROUNDS = 3
BURST = 1_000  # trivial jobs submitted at once


@ray.remote(num_cpus=0.25)
def raw_trials(n: int) -> dict[str, Any]:
    """What ``trials`` does, as a plain Ray task: its events and its result (nothing stored)."""
    events = []
    for t in range(n):
        events.append({"progress": {"done": t + 1, "total": n}})
        events.append({"trial": t})
    return {"trials": n, "started_from": 0}


@ray.remote(num_cpus=0.25, max_concurrency=16)
class RawStreams:
    """The Ray path a job takes, bare: a streaming actor call per job (its events and result), 16 in flight
    on one actor, read by an async actor (as the coordinator reads jobs)."""

    def trials(self, n: int) -> Any:
        events = [{"progress": {"done": t + 1, "total": n}} for t in range(n)] + [{"trial": t} for t in range(n)]
        yield [*events, {"trials": n, "started_from": 0}]  # one object, as a short job's batch and outcome

    async def read(self, target: Any, n: int) -> float:
        import asyncio

        slots = asyncio.Semaphore(16)

        async def one() -> None:
            async with slots:
                async for ref in target.trials.options(num_returns="streaming").remote(1):
                    await ref

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)


def raw_stream_rate(streams: tuple[Any, Any], n: int) -> float:
    """Bare streaming actor calls/s (the ceiling of one streaming call per job), the best of two tries."""
    actor, reader = streams
    return max(ray.get(reader.read.remote(actor, n)) for _ in range(2))


def raw_rate(n: int) -> float:
    """Raw Ray tasks/s for ``n`` trivial tasks submitted at once (after a warm-up that starts Ray's workers),
    the best of two tries (Ray's worker pool makes this anchor noisy)."""
    ray.get([raw_trials.remote(1) for _ in range(200)])
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        ray.get([raw_trials.remote(1) for _ in range(n)])
        best = max(best, n / (time.perf_counter() - start))
    return best


def jobs_rate(orch: orchestrator.Orchestrator, n: int) -> float:
    """Jobs/s for ``n`` trivial jobs submitted at once, until the last one has finished."""
    start = time.perf_counter()
    jobs = orch.submit_many("demo", "trials", [{"n": 1}] * n)
    records = orch.wait(jobs, timeout=600)  # as ray.get of many refs
    elapsed = time.perf_counter() - start
    assert all(r["status"] == "succeeded" for r in records), "a trivial job did not succeed"
    return n / elapsed


def fill(state_dir: Path, jobs: int, sessions: int, files: int) -> None:
    """History written straight into the store: finished jobs with two events each, closed sessions, files."""
    Store(state_dir).close()  # the schema
    finished_jobs(state_dir / "orchestrator.db", jobs, "demo", time.time() - 3600)
    db = sqlite3.connect(state_dir / "orchestrator.db")
    now = time.time() - 3600
    db.executemany(
        "INSERT INTO sessions (id, pool, slot, created, ttl_s, closed, close_reason) VALUES (?,?,?,?,?,?,?)",
        ((f"old-{i:08d}", "demo", 0, now, None, now, "closed by client") for i in range(sessions)),
    )
    (state_dir / "files").mkdir(exist_ok=True)
    for i in range(files):
        (state_dir / "files" / f"file-old{i:06d}").write_bytes(b'{"prompt": "a", "completion": "b"}\n')
    db.executemany(
        "INSERT INTO files (id, filename, purpose, bytes, created, path) VALUES (?,?,?,?,?,?)",
        ((f"file-old{i:06d}", "old.jsonl", "fine-tune", 35, now, f"files/file-old{i:06d}") for i in range(files)),
    )
    db.commit()
    db.close()


def p50_ms(action: Callable[[], Any], tries: int = TRIES) -> float:
    samples = []
    for _ in range(tries):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def coordinator_pid(orch: orchestrator.Orchestrator) -> int:
    return int(ray.get(orch.coordinator.__ray_call__.remote(lambda self: os.getpid())))


def rss_mb(orch: orchestrator.Orchestrator) -> float:
    return float(psutil.Process(coordinator_pid(orch)).memory_info().rss / 2**20)


def prepare(orch: orchestrator.Orchestrator, open_sessions: int) -> tuple[list[Any], str, float]:
    """The side's open sessions, a full first page of recent jobs (both sides list 100 of them), and what each
    open session added to the coordinator's RSS (KB)."""
    # The slope over the second half: one-off growth (the first sessions' imports, caches, arenas) is not a
    # session's cost.
    half = open_sessions // 2
    held = [orch.session("demo") for _ in range(half)]
    middle = rss_mb(orch)
    held += [orch.session("demo") for _ in range(open_sessions - half)]
    per_session_kb = (rss_mb(orch) - middle) * 1024 / (open_sessions - half)
    jobs = [orch.submit("demo", "trials", n=1) for _ in range(100)]
    for job in jobs:
        job.result(timeout=60)
    return held, jobs[-1].id, per_session_kb


def operations(orch: orchestrator.Orchestrator, job_id: str, session: Any) -> dict[str, tuple[Callable[[], Any], int]]:
    """What is timed on each side, with how many tries."""

    def open_close() -> None:
        orch.session("demo").close()

    return {
        "job_submit_ms": (lambda: orch.submit("demo", "trials", n=1), TRIES),
        "job_status_ms": (lambda: orch.job(job_id).status(), TRIES),
        "job_list_page_ms": (lambda: ray.get(orch.coordinator.list_jobs.remote(None, None, 100)), TRIES),
        "session_open_ms": (open_close, TRIES),
        "session_call_ms": (lambda: session.call("incr"), TRIES * 2),
        "session_read_ms": (lambda: session.call("incr", by=0), TRIES * 2),  # changes nothing: no store write
        "plain_call_ms": (lambda: orch.call("demo", "add", a=1, b=2), TRIES * 2),
        "status_ms": (orch.status, TRIES // 2),
    }


def coordinator_figures(orch: orchestrator.Orchestrator) -> dict[str, float]:
    """The coordinator's RSS, then its boot: SIGKILL it and time until it answers again (Ray restarts it)."""
    pid = coordinator_pid(orch)
    rss = psutil.Process(pid).memory_info().rss / 2**20
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    while True:
        try:
            orch.status()
            break
        except Exception:  # the coordinator is restarting: Ray retries, or the call fails meanwhile
            time.sleep(0.05)
    return {"coordinator_rss_mb": rss, "boot_s": time.perf_counter() - start}


def measure(sides: dict[str, orchestrator.Orchestrator], open_sessions: int, console: Console) -> dict[str, Any]:
    """Each operation on both sides in turn, ROUNDS times (the order alternating): the best p50 of each side."""
    held, ops, per_session = {}, {}, {}
    for side, orch in sides.items():
        held[side], job_id, per_session[side] = prepare(orch, open_sessions)
        ops[side] = operations(orch, job_id, orch.session("demo"))
        console.print(f"{side}: {open_sessions} sessions open")
    out: dict[str, dict[str, float]] = {side: {} for side in sides}
    raw: dict[str, float] = {}
    streams = (RawStreams.remote(), RawStreams.remote())
    ray.get(streams[1].read.remote(streams[0], 100))  # warm
    for r in range(ROUNDS):
        for name in ops["empty"]:
            for side in sides if r % 2 == 0 else reversed(sides):
                action, tries = ops[side][name]
                value = p50_ms(action, tries)
                out[side][name] = min(out[side].get(name, value), value)
        # Throughput: the best of the rounds for raw Ray tasks and for each side's jobs (higher is better).
        raw["raw_ray_tasks_per_s"] = max(raw.get("raw_ray_tasks_per_s", 0.0), raw_rate(BURST))
        raw["raw_stream_calls_per_s"] = max(raw.get("raw_stream_calls_per_s", 0.0), raw_stream_rate(streams, BURST))
        for side in sides if r % 2 == 0 else reversed(sides):
            out[side]["trivial_jobs_per_s"] = max(
                out[side].get("trivial_jobs_per_s", 0.0), jobs_rate(sides[side], BURST)
            )
    for side in sides:
        out[side] |= raw | {"session_rss_kb": per_session[side]}
    for side, orch in sides.items():
        out[side] |= coordinator_figures(orch)
        for session in held[side]:
            session.close()
        console.print(f"{side}: " + ", ".join(f"{k} {v:.2f}" for k, v in out[side].items()))
    return out


def pools() -> dict[str, Any]:
    return {
        "demo": {
            "worker": "workers.demo:Demo",
            "resources": {"num_cpus": 0.25},
            "limits": {"concurrency": 16, "queue": 1024},
            "sessions": {"per_worker": 0, "checkpoint": "after_call", "idle_timeout_s": 3600, "max_open": 100_000},
        }
    }


def start_side(state_dir: Path, side: str) -> orchestrator.Orchestrator:
    namespace = f"scale-{side}-{uuid.uuid4().hex[:6]}"
    data = {"ray": {"namespace": namespace}, "state_dir": str(state_dir), "pools": pools()}
    return orchestrator.start(parse_config(data, source="bench/scale.py", base_dir=ROOT))


def show(empty: dict[str, Any], full: dict[str, Any], sizes: dict[str, int], console: Console) -> list[dict[str, Any]]:
    title = f"control plane: empty store vs {sizes['jobs']:,} jobs, {sizes['closed_sessions']:,} closed sessions"
    table = Table(title=f"{title}, {sizes['files']:,} files, {sizes['open_sessions']:,} open sessions")
    for column in ("measure", "empty", "full", "ratio", "goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    rows = []
    goals = {"boot_s": "<= 2 s", "coordinator_rss_mb": "<= 1.1", "session_rss_kb": "<= 4 KB each"}
    goals |= {"trivial_jobs_per_s": f">= 1/{RATIO_GOAL}", "raw_ray_tasks_per_s": "(anchor)"}
    goals |= {"raw_stream_calls_per_s": "(context)"}
    for key in empty:
        goal = goals.get(key, f"<= {RATIO_GOAL}")
        ratio = full[key] / empty[key] if empty[key] else float("nan")
        rows.append({"measure": key, "empty": empty[key], "full": full[key], "ratio": ratio, "goal": goal})
        table.add_row(key, f"{empty[key]:.2f}", f"{full[key]:.2f}", f"{ratio:.2f}", goal)
    for key in ("session_call_ms", "session_read_ms"):
        ratio = full[key] / full["plain_call_ms"]
        name = f"{key.removesuffix('_ms')} / plain call (full)"
        table.add_row(name, "", "", f"{ratio:.2f}", "<= 2")
        rows.append({"measure": f"{key.removesuffix('_ms')}_over_plain_call", "ratio": ratio, "goal": "<= 2"})
    for side, figures in (("empty", empty), ("full", full)):
        ratio = figures["trivial_jobs_per_s"] / figures["raw_ray_tasks_per_s"]
        table.add_row(f"trivial jobs / raw Ray tasks ({side})", "", "", f"{ratio:.2f}", ">= 0.5")
        rows.append({"measure": f"trivial_jobs_over_raw_tasks_{side}", "ratio": ratio, "goal": ">= 0.5"})
        ratio = figures["trivial_jobs_per_s"] / figures["raw_stream_calls_per_s"]
        table.add_row(f"trivial jobs / bare streaming calls ({side})", "", "", f"{ratio:.2f}", "(context)")
        rows.append({"measure": f"trivial_jobs_over_stream_calls_{side}", "ratio": ratio, "goal": "(context)"})
    console.print(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller history (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    if args.quick:
        sizes = {"jobs": 20_000, "closed_sessions": 2_000, "files": 200, "open_sessions": 200}
    else:
        sizes = {"jobs": 100_000, "closed_sessions": 10_000, "files": 1_000, "open_sessions": 1_000}
    console = Console(width=None if sys.stdout.isatty() else 160)
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="scale")
    try:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            empty_dir, full_dir = Path(tmp) / "empty", Path(tmp) / "full"
            empty_dir.mkdir()
            full_dir.mkdir()
            start = time.perf_counter()
            fill(full_dir, sizes["jobs"], sizes["closed_sessions"], sizes["files"])
            console.print(f"filled the store in {time.perf_counter() - start:.1f} s")
            sides = {"empty": start_side(empty_dir, "empty"), "full": start_side(full_dir, "full")}
            try:
                out = measure(sides, sizes["open_sessions"], console)
            finally:
                for orch in sides.values():
                    orch.shutdown(drain_s=2.0)
            empty, full = out["empty"], out["full"]
    finally:
        ray.shutdown()
    rows = show(empty, full, sizes, console)
    report = {
        "benchmark": "scale",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": time.perf_counter() - started,
        "machine": machine(ray_num_cpus=4, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "sizes": sizes,
        "anchor": "the same operations on an empty store in the same run (open sessions on both sides); raw Ray"
        " tasks doing trials' work for the jobs' rate",
        "empty": empty,
        "full": full,
        "rows": rows,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
