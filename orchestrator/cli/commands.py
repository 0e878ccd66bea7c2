"""The ``orchestrator`` command: up, down, status, call, sessions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.errors import InvalidArguments, OrchestratorError

# Piped output is read by scripts and tests: never truncate it to an 80-column guess.
console = Console(width=None if sys.stdout.isatty() else 200)


def _human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(value)


def status_table(status: dict[str, Any]) -> Table:
    """Pools and their actors as a rich table: a heading row per pool, then its actors."""
    table = Table(title="pools")
    for column in ("actor", "state", "pid", "calls", "busy", "sessions", "restarts", "memory"):
        table.add_column(column, overflow="fold")
    for pool in status.values():
        reason = f": {pool['reason']}" if pool["reason"] else ""
        queue = f", queued {pool['queued']}" if pool.get("queued") else ""
        jobs = ", ".join(f"{n} {state}" for state, n in sorted((pool.get("jobs") or {}).items()))
        jobs = f"; jobs: {jobs}" if jobs else ""
        heading = f"{pool['name']} ({pool['state']}{reason}; {pool['sessions']} session(s){queue}{jobs})"
        table.add_row(f"[bold]{heading}[/bold]", end_section=False)
        for actor in pool["actors"]:
            table.add_row(
                f"  {actor['name']}",
                actor["state"] + (f": {actor['reason']}" if actor["reason"] else ""),
                str(actor["pid"] or "-"),
                str(actor["calls"]),
                str(actor["inflight"]),
                str(actor["sessions"]),
                str(actor["restarts"]),
                _human_bytes(actor["rss"]),
            )
    return table


def _dashboard_url() -> str | None:
    from ray._private import worker

    node = getattr(worker.global_worker, "node", None)
    url = node.address_info.get("webui_url") if node is not None else None
    return f"http://{url}" if url and not str(url).startswith("http") else url


def progress_table(status: dict[str, Any]) -> Table:
    """Pools while they start: each actor's state and why it waits (env build, resources)."""
    table = Table(title="starting pools")
    for column in ("pool", "state", "actor", "actor state"):
        table.add_column(column)
    for pool in status.values():
        for i, actor in enumerate(pool["actors"]):
            why = f": {actor['reason']}" if actor["reason"] else ""
            table.add_row(
                pool["name"] if i == 0 else "", pool["state"] if i == 0 else "", actor["name"], actor["state"] + why
            )
    return table


def cmd_up(args: argparse.Namespace) -> int:
    """Start Ray (or join --address), the pools and the HTTP gateway; Ctrl-C or SIGTERM drains and stops.

    The gateway runs in a child process this one supervises: it can crash or be
    restarted without touching Ray, the pools, sessions or running jobs.
    """
    import os
    import signal
    import subprocess

    import ray
    from rich.live import Live

    from orchestrator.config import load_config
    from orchestrator.control.launch import start
    from orchestrator.gateway.guard import check_bind

    config = load_config(args.config)
    gateway = config.gateway
    config.ray.address = args.address or config.ray.address
    host, port = args.host or gateway.host, gateway.port if args.port is None else args.port
    check_bind(host, gateway.token)  # refuse before starting anything
    console.print(f"starting {len(config.pools)} pool(s) from {args.config}")
    with Live(console=console, refresh_per_second=2, transient=True) as live:
        orch = start(config, on_progress=lambda status: live.update(progress_table(status)))
    console.print(status_table(orch.status()))
    dashboard = _dashboard_url()
    if dashboard:
        console.print(f"Ray dashboard: {dashboard}")

    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    command = [sys.executable, "-m", "orchestrator", "gateway", "--address", ray.get_runtime_context().gcs_address]
    command += ["--namespace", orch.namespace, "--host", host, "--port", str(port)]
    command += ["--max-body", str(gateway.max_body), "--stop-parent"]
    env = {**os.environ, **({"ORCHESTRATOR_TOKEN": gateway.token} if gateway.token else {})}
    child: subprocess.Popen[bytes] | None = None
    try:
        while not stop["now"]:
            if child is None or child.poll() is not None:
                if child is not None:
                    console.print(f"the gateway exited ({child.returncode}); restarting it")
                child = subprocess.Popen(command, env=env)
                console.print(f"gateway: http://{host}:{port}  (docs: /docs; Ctrl-C or `orchestrator down` stops)")
            time.sleep(0.2)
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=30)
        console.print("shutting down: draining calls and checkpointing sessions...")
        summary = orch.shutdown()
        console.print(
            f"stopped {summary['actors_stopped']} actor(s), checkpointed {summary['sessions_checkpointed']} session(s)"
        )
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Serve only the HTTP gateway for an orchestrator already running on a Ray cluster."""
    import os

    from orchestrator.dataplane.handles import connect
    from orchestrator.gateway import check_bind, serve

    token = os.environ.get("ORCHESTRATOR_TOKEN") or None
    check_bind(args.host, token)
    orch = connect(args.address or "auto", namespace=args.namespace)

    def ready(url: str) -> None:
        console.print(f"gateway: {url}", highlight=False)

    def stop_parent() -> None:  # under `orchestrator up`: POST /v1/shutdown stops everything
        import signal

        os.kill(os.getppid(), signal.SIGTERM)

    try:
        serve(
            orch,
            host=args.host,
            port=args.port,
            token=token,
            max_body=args.max_body,
            on_ready=ready,
            on_shutdown=stop_parent if args.stop_parent else None,
        )
    finally:
        orch.close()
    return 0


def _client(args: argparse.Namespace) -> Any:
    from orchestrator.client import Client

    client = Client.from_env()
    if args.url:
        client = Client(args.url, token=client.token)
    return client


def cmd_down(args: argparse.Namespace) -> int:
    """Ask the running server to drain, checkpoint sessions and stop (it exits when done)."""
    with _client(args) as client:
        client.shutdown()
    console.print(f"asked the orchestrator at {client.url} to shut down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show pools, actors, state, sessions, queue, restarts and memory."""
    with _client(args) as client:
        pools = client.pools()
    if args.json:
        print(json.dumps(pools, indent=2, default=str))
    else:
        console.print(status_table({p["name"]: p for p in pools}))
    return 0


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArguments(f"expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_call(args: argparse.Namespace) -> int:
    """Call an op (key=value arguments, JSON values accepted); a streaming op prints events as they come."""
    arguments = parse_arguments(args.args)
    with _client(args) as client:
        ops = client.pool(args.pool)["ops"]
        if args.op in ops and ops[args.op]["stream"]:
            with client.stream(args.pool, args.op, **arguments) as stream:
                for event in stream:
                    print(json.dumps(event, default=str), flush=True)
            print(json.dumps({"result": stream.result}, default=str))
        else:
            print(json.dumps(client.call(args.pool, args.op, **arguments), default=str))
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """List open sessions."""
    with _client(args) as client:
        sessions = client.sessions(args.pool)
    table = Table(title="sessions")
    for column in ("id", "pool", "actor slot", "age (s)", "ttl (s)"):
        table.add_column(column)
    for s in sessions:
        table.add_row(s["id"], s["pool"], str(s["slot"]), f"{time.time() - s['created']:.0f}", str(s["ttl_s"] or "-"))
    console.print(table)
    return 0


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    """Submit a job (key=value arguments); prints its id. --watch follows it."""
    with _client(args) as client:
        job = client.submit(args.pool, args.op, _max_retries=args.max_retries, **parse_arguments(args.args))
        print(job.id)
        if args.watch:
            return _watch(job)
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    """Follow a job's events: a progress bar for progress(done=, total=), other fields as they change."""
    with _client(args) as client:
        return _watch(client.job(args.job_id))


def _watch(job: Any) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = None
        for seq, event in job.events():
            fields = event.get("progress", event) if isinstance(event, dict) else {}
            if isinstance(fields, dict) and "done" in fields and "total" in fields:
                if bar is None:
                    bar = progress.add_task(f"job {job.id[:8]}", total=fields["total"])
                progress.update(bar, completed=fields["done"], total=fields["total"])
            if not (isinstance(event, dict) and set(event) == {"progress"}):
                progress.console.print(f"[dim]{seq}[/dim] {json.dumps(event, default=str)}", highlight=False)
    record = job.status()
    console.print(f"job {job.id}: {record['status']}")
    if record["status"] == "succeeded":
        print(json.dumps(record["result"], default=str))
        return 0
    if record.get("error"):
        console.print(f"[red]error[/red] {record['error']['code']}: {record['error']['message']}")
    return 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """List jobs (newest first)."""
    with _client(args) as client:
        jobs = client.jobs(pool=args.pool, status=args.status)
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    table = Table(title="jobs")
    for column in ("id", "pool", "op", "status", "attempts", "events", "age (s)"):
        table.add_column(column)
    for job in jobs:
        age = f"{time.time() - job['created']:.0f}"
        table.add_row(job["id"], job["pool"], job["op"], job["status"], str(job["attempts"]), str(job["events"]), age)
    console.print(table)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel a job (a finished job is left as it is)."""
    with _client(args) as client:
        answer = client.job(args.job_id).cancel()
    console.print(answer["message"])
    return 0


def cmd_jobs_result(args: argparse.Namespace) -> int:
    """Print a job's result (waits up to --timeout seconds); its error if it failed."""
    with _client(args) as client:
        print(json.dumps(client.job(args.job_id).result(timeout=args.timeout), default=str))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Build models that need no download: `models tiny --out DIR` makes a tiny random Llama-style chat model."""
    from orchestrator.models.tiny import build_tiny_model, default_tiny_dir

    console.print(str(build_tiny_model(args.out or default_tiny_dir())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command has --help)."""
    parser = argparse.ArgumentParser(prog="orchestrator", description="Supervised pools of Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=fn.__doc__, description=fn.__doc__)
        p.set_defaults(fn=fn)
        if name in ("up", "gateway"):
            p.add_argument("--address", default=None, help="Ray cluster address (default: embedded / the local one)")
        if name == "gateway":
            p.add_argument("--namespace", default="orchestrator", help="Ray namespace of the orchestrator")
        if name not in ("up", "gateway"):
            p.add_argument(
                "--url", default=None, help="gateway URL (default: $ORCHESTRATOR_URL or http://127.0.0.1:8000)"
            )
        return p

    up = add("up", cmd_up)
    up.add_argument("--config", default="pools.yaml", help="pools file (default: pools.yaml)")
    up.add_argument("--host", default=None, help="gateway bind address (default: gateway.host, 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="gateway port (default: gateway.port, 8000)")
    gateway = add("gateway", cmd_gateway)
    gateway.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs ORCHESTRATOR_TOKEN)")
    gateway.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    gateway.add_argument("--max-body", type=int, default=16 * 1024**2, help="request body limit in bytes")
    gateway.add_argument("--stop-parent", action="store_true", help="POST /v1/shutdown stops the parent `up`")
    add("down", cmd_down)
    status = add("status", cmd_status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    call = add("call", cmd_call)
    call.add_argument("pool")
    call.add_argument("op")
    call.add_argument("args", nargs="*", help="key=value arguments (values may be JSON)")
    sessions = add("sessions", cmd_sessions)
    sessions.add_argument("--pool", default=None)

    models = sub.add_parser("models", help=cmd_models.__doc__, description=cmd_models.__doc__)
    models.set_defaults(fn=cmd_models)
    kinds = models.add_subparsers(dest="kind", required=True)
    tiny = kinds.add_parser("tiny", help="a tiny random chat model with tokenizer and chat template (offline)")
    tiny.add_argument("--out", type=Path, default=None, help="folder (default: ~/.cache/orchestrator/models/tiny)")

    jobs = sub.add_parser("jobs", help="Long-running jobs: submit, watch, list, cancel, result.")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)

    def add_job(name: str, fn: Any) -> argparse.ArgumentParser:
        p = jobs_sub.add_parser(name, help=fn.__doc__, description=fn.__doc__)
        p.set_defaults(fn=fn)
        p.add_argument("--url", default=None, help="gateway URL (default: $ORCHESTRATOR_URL or http://127.0.0.1:8000)")
        return p

    submit = add_job("submit", cmd_jobs_submit)
    submit.add_argument("pool")
    submit.add_argument("op")
    submit.add_argument("args", nargs="*", help="key=value arguments (values may be JSON)")
    submit.add_argument("--max-retries", type=int, default=None, help="re-runs after the actor dies")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    add_job("watch", cmd_jobs_watch).add_argument("job_id")
    listing = add_job("list", cmd_jobs_list)
    listing.add_argument("--pool", default=None)
    listing.add_argument("--status", default=None, help="queued|running|retrying|succeeded|failed|cancelled")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_job("cancel", cmd_jobs_cancel).add_argument("job_id")
    result = add_job("result", cmd_jobs_result)
    result.add_argument("job_id")
    result.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: until it ends)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orchestrator`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except OrchestratorError as exc:
        console.print(f"[red]error[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
