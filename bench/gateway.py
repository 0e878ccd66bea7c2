"""A no-op over HTTP three ways: the orchestrator gateway, Ray Serve, and FastAPI + one Ray actor call.

Run from the repository root (with the project's venv active and the bench extra
installed: ``pip install -e ".[bench]"``, which adds ``ray[serve]``):

    python bench/gateway.py                  # full run (~2-4 min), writes bench/results/gateway.json
    python bench/gateway.py --quick          # fewer requests (a smoke run)
    python bench/gateway.py --out /tmp/g.json
    python bench/gateway.py --wrk            # c=32 throughput with wrk (if installed) instead of httpx

One local Ray (4 logical CPUs) holds all three servers, each a real HTTP server on 127.0.0.1:

- gateway: ``orchestrator gateway`` in a subprocess (uvicorn), over a pool "bench" of one
  ``tests.kit:Toolbox`` actor (num_cpus=1, concurrency 32, queue 1024);
  POST /v1/pools/bench/ops/noop -> {"result": null}
- Ray Serve: one replica (num_cpus=1, max_ongoing_requests=100) of an async no-op
  deployment behind Serve's HTTP proxy; access logs off on both sides, as in the gateway.
- anchor: a minimal FastAPI app in a uvicorn subprocess whose handler awaits one call to a
  plain Ray actor's ``noop`` (num_cpus=1): the floor for "HTTP in, one Ray actor call, JSON out".

The load comes from this process (the servers are subprocesses or Ray actors): an async httpx
client, one keep-alive connection for latency (c=1, chunks alternating between the servers so
drift hits all alike) and 32 for throughput (a fixed request count, best of a few alternating
repeats). CPU seconds per request of each process on a server's path (and of the client) are
measured with psutil during the c=32 runs. On a small machine the client shares the cores with
the servers, so absolute numbers are low; the ratios are what the goals use. A fourth row, the
anchor app answering without any Ray call, is the HTTP floor (client + uvicorn + FastAPI).

httpx costs far more CPU per request than the servers' own HTTP handling (about 1.7 ms on a
2-core box, against ~0.1 ms for wrk), so at c=32 the default measurement is partly the
client's; ``--wrk`` takes the client out of the way when wrk is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/gateway.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.common import machine, percentile, write_report  # noqa: E402

THROUGHPUT_RATIO_GOAL = 3.0  # gateway req/s / Serve req/s at c=32 must be >= this
P50_RATIO_GOAL = 0.5  # gateway p50 / Serve p50 at c=1 must be <= this
CONCURRENCY = 32
HOST = "127.0.0.1"
EXPECTED = {"result": None}
ANCHOR_ACTOR = "bench-anchor-raw"


class Raw:
    """The anchor's actor: a bare no-op."""

    def noop(self) -> None:
        pass

    def pid(self) -> int:
        return os.getpid()


def params(quick: bool) -> dict[str, int]:
    if quick:
        return {"latency": 200, "warmup": 50, "chunk": 50, "requests": 1000, "repeats": 1}
    return {"latency": 1000, "warmup": 100, "chunk": 100, "requests": 5000, "repeats": 2}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------- the anchor server (subprocess side)
def serve_anchor(address: str, namespace: str, port: int) -> None:
    """The anchor: FastAPI on uvicorn (same settings as the gateway), one awaited Ray actor call per request."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    ray.init(address=address, namespace=namespace, log_to_driver=False)
    actor = ray.get_actor(ANCHOR_ACTOR, namespace=namespace)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/floor")
    async def floor() -> Response:
        return Response(json.dumps({"result": None}, separators=(",", ":")), media_type="application/json")

    @app.post("/noop")
    async def noop() -> Response:
        result = await actor.noop.remote()
        return Response(json.dumps({"result": result}, separators=(",", ":")), media_type="application/json")

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# ----------------------------------------------------------------- servers (bench side)
class ServerProcess:
    """A server in a subprocess, its output in a log file; ready once ``url`` answers a POST with 200."""

    def __init__(self, name: str, command: list[str], url: str, log_dir: Path, timeout: float = 90.0) -> None:
        self.name, self.url = name, url
        self.log = log_dir / f"{name.replace(' ', '-')}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATOR_TOKEN", "RAY_ADDRESS")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(url, timeout, self.check_alive)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def wait_ready(url: str, timeout: float, check: Callable[[], None] = lambda: None) -> None:
    """Poll POST ``url`` until it answers 200 with the expected body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        check()
        try:
            response = httpx.post(url, timeout=2.0)
            if response.status_code == 200 and response.json() == EXPECTED:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


def start_serve(port: int) -> str:
    """Serve's proxy on 127.0.0.1:port and one replica of an async no-op; returns the route's URL."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=100,
        ray_actor_options={"num_cpus": 1},
        logging_config={"enable_access_log": False},
    )
    class Noop:
        async def __call__(self, request: Request) -> dict[str, None]:
            return {"result": None}

    app: Any = Noop  # serve.deployment returns a Deployment (with .bind()); its stubs say the class

    serve.start(http_options={"host": HOST, "port": port}, logging_config={"enable_access_log": False})
    serve.run(app.bind(), name="bench", route_prefix="/noop", logging_config={"enable_access_log": False})
    url = f"http://{HOST}:{port}/noop"
    wait_ready(url, 60.0)
    return url


def pids_titled(pattern: str) -> list[int]:
    """PIDs of processes whose command line (Ray sets actor process titles) matches ``pattern``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if re.search(pattern, cmdline):
                found.append(int(proc.info["pid"]))
    return found


@dataclass
class Target:
    """One server under test: its URL and the processes on its request path."""

    name: str
    url: str
    processes: dict[str, int]  # role -> pid
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)  # role -> CPU ms per request, per run


# ----------------------------------------------------------------- load
async def post(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post(url)
    if response.status_code != 200:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")
    if response.json() != EXPECTED:
        raise RuntimeError(f"POST {url}: unexpected body {response.text[:300]}")


def new_client() -> httpx.AsyncClient:
    """A client of one keep-alive connection.

    The load uses one such client per connection rather than one client with a pool of 32: httpcore's
    shared pool costs about 3x the client CPU per request at 32 connections (5.6 vs 1.7 ms measured on a
    2-core box), and the client shares the cores with the servers.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))


async def measure_latency(targets: list[Target], n: int, warmup: int, chunk: int) -> None:
    """Per-request seconds at one connection, alternating chunks across the targets."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(new_client()) for _ in targets]
        for target, client in zip(targets, clients, strict=True):
            for _ in range(warmup):
                await post(client, target.url)
        while any(len(t.latencies) < n for t in targets):
            for target, client in zip(targets, clients, strict=True):
                for _ in range(min(chunk, n - len(target.latencies))):
                    start = time.perf_counter()
                    await post(client, target.url)
                    target.latencies.append(time.perf_counter() - start)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds so far of each process (threads included)."""
    out = {}
    for role, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[role] = times.user + times.system
        except psutil.Error:
            out[role] = float("nan")
    return out


async def httpx_rate(url: str, n: int, concurrency: int) -> float:
    """Requests/s of ``n`` POSTs from ``concurrency`` keep-alive connections (opened before the clock starts)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(new_client()) for _ in range(concurrency)]
        await asyncio.gather(*(post(c, url) for c in clients))
        remaining = n

        async def worker(c: httpx.AsyncClient) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await post(c, url)

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        return n / (time.perf_counter() - start)


def wrk_rate(wrk: str, url: str, seconds: float, concurrency: int) -> tuple[float, int]:
    """Requests/s (and completed requests) from wrk POSTing for ``seconds``; non-2xx answers fail the run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
    try:
        command = [wrk, "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name, url]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} saw errors:\n{out}")
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rate is None or done is None:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return float(rate.group(1)), int(done.group(1))


def measure_rates(targets: list[Target], n: int, repeats: int, wrk: str | None, wrk_seconds: float) -> None:
    """Requests/s at CONCURRENCY connections, alternating targets; CPU ms per request of each process."""
    client_pid = {"client (bench)": os.getpid()} if wrk is None else {}
    for _ in range(repeats):
        for target in targets:
            pids = {**target.processes, **client_pid}
            before = cpu_seconds(pids)
            if wrk is None:
                rate = asyncio.run(httpx_rate(target.url, n, CONCURRENCY))
                count = n
            else:
                rate, count = wrk_rate(wrk, target.url, wrk_seconds, CONCURRENCY)
            after = cpu_seconds(pids)
            target.rates.append(rate)
            for role in pids:
                target.cpu_ms.setdefault(role, []).append((after[role] - before[role]) * 1e3 / count)


# ----------------------------------------------------------------- the run
def measure(p: dict[str, int], namespace: str, tmp: Path, use_wrk: bool, console: Console) -> list[Target]:
    import orchestrator
    from orchestrator.config import parse_config

    wrk = shutil.which("wrk") if use_wrk else None
    if use_wrk and wrk is None:
        console.print("[yellow]wrk is not installed: measuring c=32 throughput with httpx[/]")
    address = ray.get_runtime_context().gcs_address
    config = parse_config(
        {
            "ray": {"namespace": namespace},
            "state_dir": str(tmp / "state"),
            "pools": {
                "bench": {
                    "worker": "tests.kit:Toolbox",
                    "size": 1,
                    "resources": {"num_cpus": 1},
                    "limits": {"concurrency": CONCURRENCY, "queue": 1024},
                    "sessions": {"checkpoint": "never"},
                }
            },
        },
        source="bench/gateway.py",
        base_dir=ROOT,
    )
    servers: list[ServerProcess] = []
    serve_started = False
    orch = orchestrator.start(config)
    try:
        raw: Any = ray.remote(num_cpus=1)(Raw).options(name=ANCHOR_ACTOR, namespace=namespace).remote()
        raw_pid = ray.get(raw.pid.remote())
        pool_pid = int(orch.status()["bench"]["actors"][0]["pid"])

        console.print("starting the gateway, Ray Serve and the anchor...")
        port = free_port()
        gateway_command = [sys.executable, "-m", "orchestrator", "gateway"]
        gateway = ServerProcess(
            "gateway",
            [*gateway_command, "--address", address, "--namespace", namespace, "--port", str(port)],
            f"http://{HOST}:{port}/v1/pools/bench/ops/noop",
            tmp,
        )
        servers.append(gateway)

        serve_started = True
        serve_url = start_serve(free_port())
        proxies, replicas = pids_titled(r"^ray::ProxyActor"), pids_titled(r"^ray::ServeReplica:bench:Noop")
        serve_pids = {"proxy": proxies[0]} if len(proxies) == 1 else {}
        serve_pids.update({"replica": replicas[0]} if len(replicas) == 1 else {})

        port = free_port()
        anchor = ServerProcess(
            "anchor",
            [sys.executable, str(Path(__file__).resolve()), "--serve-anchor", address, namespace, str(port)],
            f"http://{HOST}:{port}/noop",
            tmp,
        )
        servers.append(anchor)

        targets = [
            Target("gateway", gateway.url, {"gateway (uvicorn)": gateway.pid, "pool actor": pool_pid}),
            Target("Ray Serve", serve_url, serve_pids),
            Target("FastAPI+actor anchor", anchor.url, {"anchor (uvicorn)": anchor.pid, "Ray actor": raw_pid}),
            Target("HTTP floor (no Ray)", anchor.url.replace("/noop", "/floor"), {"anchor (uvicorn)": anchor.pid}),
        ]
        console.print(f"c=1 latency: {p['latency']} requests each after {p['warmup']} warm-up...")
        asyncio.run(measure_latency(targets, p["latency"], p["warmup"], p["chunk"]))
        how = "wrk" if wrk else f"httpx, {p['requests']} requests"
        console.print(f"c={CONCURRENCY} throughput ({how}), best of {p['repeats']}...")
        measure_rates(targets, p["requests"], p["repeats"], wrk, p["wrk_seconds"])
        for server in servers:
            server.check_alive()
        return targets
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        if serve_started:
            from ray import serve

            with contextlib.suppress(Exception):
                serve.shutdown()
        orch.shutdown(drain_s=5.0)


def target_row(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "url": target.url,
        "p50_ms": percentile(target.latencies, 0.50) * 1e3,
        "p99_ms": percentile(target.latencies, 0.99) * 1e3,
        "mean_ms": sum(target.latencies) / len(target.latencies) * 1e3,
        "rps_c32": max(target.rates),
        "rps_runs": target.rates,
        "cpu_ms_per_request": {role: min(runs) for role, runs in target.cpu_ms.items()},
        "processes": target.processes,
    }


def ratio_rows(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    gateway, serve_row, anchor = rows["gateway"], rows["Ray Serve"], rows["FastAPI+actor anchor"]
    floor = rows["HTTP floor (no Ray)"]["p50_ms"]  # client + uvicorn + a bare FastAPI answer
    throughput = gateway["rps_c32"] / serve_row["rps_c32"]
    p50 = gateway["p50_ms"] / serve_row["p50_ms"]
    return [
        {
            "name": f"gateway / Serve req/s @{CONCURRENCY}",
            "ratio": throughput,
            "goal": f">= {THROUGHPUT_RATIO_GOAL}",
            "meets": throughput >= THROUGHPUT_RATIO_GOAL,
        },
        {
            "name": "gateway / Serve p50 @1",
            "ratio": p50,
            "goal": f"<= {P50_RATIO_GOAL}",
            "meets": p50 <= P50_RATIO_GOAL,
        },
        {"name": f"gateway / anchor req/s @{CONCURRENCY}", "ratio": gateway["rps_c32"] / anchor["rps_c32"]},
        {"name": "gateway / anchor p50 @1", "ratio": gateway["p50_ms"] / anchor["p50_ms"]},
        {
            "name": "gateway / Serve p50 @1 above the HTTP floor",
            "ratio": (gateway["p50_ms"] - floor) / (serve_row["p50_ms"] - floor),
        },
    ]


def show(rows: list[dict[str, Any]], ratios: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="a no-op over HTTP on one local Ray (127.0.0.1)")
    for column in ("server", "p50 ms", "p99 ms", f"req/s @{CONCURRENCY}", "CPU ms/request (c=32)"):
        table.add_column(column, justify="left" if column in ("server", "CPU ms/request (c=32)") else "right")
    for row in rows:
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in row["cpu_ms_per_request"].items())
        table.add_row(row["name"], f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['rps_c32']:,.0f}", cpu)
    console.print(table)
    goals = Table(title="ratios")
    for column in ("measure", "ratio", "goal", "verdict"):
        goals.add_column(column, justify="right" if column in ("ratio", "goal") else "left")
    for row in ratios:
        if "meets" in row:
            verdict = "[green]meets goal[/]" if row["meets"] else "[red]misses goal[/]"
            goals.add_row(row["name"], f"{row['ratio']:.2f}", row["goal"], verdict)
        else:
            goals.add_row(row["name"], f"{row['ratio']:.2f}", "", "(for reference)")
    console.print(goals)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ray", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-anchor":  # the anchor server's subprocess
        serve_anchor(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    parser.add_argument("--wrk", action="store_true", help=f"c={CONCURRENCY} throughput with wrk, if installed")
    parser.add_argument("--wrk-seconds", type=float, default=10.0, help="duration of each wrk run")
    args = parser.parse_args()
    p = {**params(args.quick), "wrk_seconds": round(args.wrk_seconds)}
    console = Console(width=None if sys.stdout.isatty() else 140)  # don't wrap the table when piped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on SIGTERM too
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-gw-") as tmp:
            targets = measure(p, namespace, Path(tmp), args.wrk, console)
    finally:
        ray.shutdown()
    rows = [target_row(t) for t in targets]
    ratios = ratio_rows({row["name"]: row for row in rows})
    show(rows, ratios, console)
    used_wrk = bool(args.wrk and shutil.which("wrk"))
    report = {
        "benchmark": "gateway",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": machine(ray_num_cpus=4, versions=versions()),
        "goals": {"throughput_ratio_min": THROUGHPUT_RATIO_GOAL, "p50_ratio_max": P50_RATIO_GOAL},
        "params": p,
        "load": {
            "client": "wrk -t2" if used_wrk else "httpx.AsyncClient in the bench process",
            "latency_connections": 1,
            "throughput_connections": CONCURRENCY,
        },
        "servers": {
            "gateway": "`python -m orchestrator gateway` subprocess (uvicorn) -> pool of one Toolbox WorkerHost "
            "(num_cpus=1, concurrency 32, queue 1024)",
            "Ray Serve": "Serve HTTP proxy -> one replica (num_cpus=1, max_ongoing_requests=100), "
            "async __call__ returning {'result': None}, access logs off",
            "FastAPI+actor anchor": "FastAPI on a uvicorn subprocess, handler awaits one plain Ray actor noop "
            "(num_cpus=1)",
        },
        "results": rows,
        "ratios": ratios,
        "all_goals_met": all(r["meets"] for r in ratios if "meets" in r),
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
