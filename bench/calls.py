"""Call-path overhead of the orchestrator's in-process API, each figure against raw Ray measured in the same run.

Run from the repository root (with the project's venv active):

    python bench/calls.py                  # full run, writes bench/results/calls.json
    python bench/calls.py --quick          # fewer iterations (a smoke run)
    python bench/calls.py --out /tmp/c.json

One local Ray (4 logical CPUs) holds both sides: a pool "bench" of one
``tests.kit:Toolbox`` actor (num_cpus=1) and one raw Ray actor (num_cpus=1).
Two anchors: a bare no-argument call / unbounded stream (the raw floor), and the
same Ray work the orchestrator must do (one request argument per call, a stream
with the same backpressure window), which isolates the orchestrator's own cost.
Latencies are measured in alternating chunks so drift hits both sides alike;
rates are the best of a few alternating repeats. Ratios are orchestrator / raw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

# Run as `python bench/<name>.py` from the repository root: the test kit (tests.kit) must import here too.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402
from bench.common import machine, percentile, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402

LATENCY_GOAL = 1.25  # orchestrator latency / raw latency must be <= this
METRICS_GOAL = 1.05  # metrics on / metrics off: at most 5% added latency
THROUGHPUT_GOAL = 0.8  # orchestrator rate / raw rate must be >= this


class Raw:
    """The anchor: the same work as Toolbox's noop / incr / ticker, as a bare Ray actor."""

    def __init__(self) -> None:
        self.count = 0

    def noop(self) -> None:
        pass

    def dispatch(self, request: tuple[Any, ...]) -> None:
        """A no-op that, like WorkerHost.call, receives one request tuple (Ray charges per argument)."""

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def ticker(self, n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}


def params(quick: bool) -> dict[str, int]:
    if quick:
        return {"calls": 300, "warmup": 50, "chunk": 50, "pipelined": 1000, "events": 2000, "repeats": 2}
    return {"calls": 2000, "warmup": 200, "chunk": 100, "pipelined": 5000, "events": 20000, "repeats": 3}


def paired_latency(
    raw: Callable[[], object], orch: Callable[[], object], n: int, warmup: int, chunk: int
) -> tuple[list[float], list[float]]:
    """Per-call seconds for each side, alternating chunks of ``chunk`` calls."""
    for _ in range(warmup):
        raw()
        orch()
    samples: tuple[list[float], list[float]] = ([], [])
    while len(samples[1]) < n:
        for fn, out in ((raw, samples[0]), (orch, samples[1])):
            for _ in range(min(chunk, n - len(out))):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return samples


def paired_rate(raw: Callable[[], int], orch: Callable[[], int], repeats: int) -> tuple[list[float], list[float]]:
    """Items per second of each run (``fn`` returns how many items it handled), alternating sides."""
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((raw, rates[0]), (orch, rates[1])):
            start = time.perf_counter()
            count = fn()
            out.append(count / (time.perf_counter() - start))
    return rates


def latency_rows(name: str, raw: list[float], orch: list[float], goal: float = LATENCY_GOAL) -> list[dict[str, Any]]:
    rows = []
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        r, o = percentile(raw, q) * 1e6, percentile(orch, q) * 1e6
        rows.append(
            {
                "name": f"{name} {label}",
                "unit": "µs",
                "raw": r,
                "orchestrator": o,
                "ratio": o / r,
                "goal": f"<= {goal}",
                "meets": o / r <= goal,
            }
        )
    return rows


def rate_row(name: str, unit: str, raw: list[float], orch: list[float]) -> dict[str, Any]:
    r, o = max(raw), max(orch)
    return {
        "name": name,
        "unit": unit,
        "raw": r,
        "orchestrator": o,
        "ratio": o / r,
        "goal": f">= {THROUGHPUT_GOAL}",
        "meets": o / r >= THROUGHPUT_GOAL,
        "runs": {"raw": raw, "orchestrator": orch},
    }


def measure(p: dict[str, int], state_dir: Path, namespace: str) -> list[dict[str, Any]]:
    config = parse_config(
        {
            "ray": {"namespace": namespace},
            "state_dir": str(state_dir),
            "pools": {
                "bench": {
                    "worker": "tests.kit:Toolbox",
                    "size": 1,
                    "resources": {"num_cpus": 1},
                    "sessions": {"checkpoint": "never"},
                },
                # The same pool with metrics recording off in its actor: the anchor of the metrics rows.
                "bench-nometrics": {
                    "worker": "tests.kit:Toolbox",
                    "size": 1,
                    "resources": {"num_cpus": 1},
                    "sessions": {"checkpoint": "never"},
                    "env_vars": {"ORCHESTRATOR_METRICS": "0"},
                },
            },
        },
        source="bench/calls.py",
        base_dir=state_dir,
    )
    orch = orchestrator.start(config)
    raw: Any = ray.remote(num_cpus=1)(Raw).remote()
    ray.get(raw.noop.remote())
    rows: list[dict[str, Any]] = []
    try:
        rows += latency_rows(
            "noop call",
            *paired_latency(
                lambda: ray.get(raw.noop.remote()),
                lambda: orch.call("bench", "noop"),
                p["calls"],
                p["warmup"],
                p["chunk"],
            ),
        )

        request = ("noop", {}, None, None, "", "")
        rows += latency_rows(
            "noop call vs raw(request)",
            *paired_latency(
                lambda: ray.get(raw.dispatch.remote(request)),
                lambda: orch.call("bench", "noop"),
                p["calls"],
                p["warmup"],
                p["chunk"],
            ),
        )

        # "raw" here is the pool with metrics off: the ratio is what recording metrics adds to a call.
        rows += latency_rows(
            "noop call, metrics on vs off",
            *paired_latency(
                lambda: orch.call("bench-nometrics", "noop"),
                lambda: orch.call("bench", "noop"),
                p["calls"],
                p["warmup"],
                p["chunk"],
            ),
            goal=METRICS_GOAL,
        )

        n = p["pipelined"]

        def raw_many() -> int:
            return len(ray.get([raw.noop.remote() for _ in range(n)]))

        def orch_many() -> int:
            return len(orch.call_many("bench", "noop", [{}] * n))

        rows.append(rate_row("pipelined noop", "calls/s", *paired_rate(raw_many, orch_many, p["repeats"])))

        def raw_many_requests() -> int:
            return len(ray.get([raw.dispatch.remote(request) for _ in range(n)]))

        rows.append(
            rate_row(
                "pipelined noop vs raw(request)", "calls/s", *paired_rate(raw_many_requests, orch_many, p["repeats"])
            )
        )

        with orch.session("bench") as session:
            rows += latency_rows(
                "session incr",
                *paired_latency(
                    lambda: ray.get(raw.incr.remote()),
                    lambda: session.call("incr"),
                    p["calls"],
                    p["warmup"],
                    p["chunk"],
                ),
            )

        events = p["events"]

        def raw_stream() -> int:
            gen = raw.ticker.options(num_returns="streaming").remote(events)
            return sum(1 for ref in gen if ray.get(ref) is not None)

        def orch_stream() -> int:
            with orch.stream("bench", "ticker", n=events) as stream:
                count = sum(1 for _ in stream)
            assert count == events and stream.result == events, (count, stream.result)
            return count

        rows.append(rate_row("stream events", "events/s", *paired_rate(raw_stream, orch_stream, p["repeats"])))
        buffer = config.pools["bench"].limits.stream_buffer

        def raw_stream_backpressured() -> int:
            options = {"num_returns": "streaming", "_generator_backpressure_num_objects": buffer}
            gen = raw.ticker.options(**options).remote(events)
            return sum(1 for ref in gen if ray.get(ref) is not None)

        rows.append(
            rate_row(
                f"stream events vs raw(backpressure {buffer})",
                "events/s",
                *paired_rate(raw_stream_backpressured, orch_stream, p["repeats"]),
            )
        )
    finally:
        orch.shutdown(drain_s=5.0)
    return rows


def show(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="orchestrator vs raw Ray (one actor each); metrics rows: metrics on vs off")
    for column in ("measure", "unit", "raw Ray", "orchestrator", "ratio", "goal", "verdict"):
        table.add_column(column, justify="left" if column in ("measure", "unit", "verdict") else "right")
    for row in rows:
        verdict = "[green]meets goal[/]" if row["meets"] else "[red]misses goal[/]"
        table.add_row(
            row["name"],
            row["unit"],
            f"{row['raw']:,.1f}",
            f"{row['orchestrator']:,.1f}",
            f"{row['ratio']:.2f}",
            row["goal"],
            verdict,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "calls.json")
    args = parser.parse_args()
    p = params(args.quick)
    console = Console(width=None if sys.stdout.isatty() else 110)  # don't wrap the table when piped
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            rows = measure(p, Path(tmp), namespace)
    finally:
        ray.shutdown()
    show(rows, console)
    report = {
        "benchmark": "calls",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": machine(ray_num_cpus=4),
        "goals": {"latency_ratio_max": LATENCY_GOAL, "throughput_ratio_min": THROUGHPUT_GOAL},
        "params": p,
        "anchor": "plain @ray.remote(num_cpus=1) actor vs a pool of one WorkerHost (num_cpus=1)",
        "results": rows,
        "all_goals_met": all(row["meets"] for row in rows),
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
