"""The ``orchestrator`` command: the argument tree and ``main``.

Each family of commands lives in its own module, and ``render`` holds how
things print:

    server    up, gateway                                (the server install)
    pools     status, call, sessions, pools restart, down (client: httpx and pydantic only)
    jobs      jobs submit | watch | list | cancel | result  (client)
    models    models tiny
    envs      envs build | list                          (the server install)

Importing this package imports every command module, so none of them may
import a server part at module level: ``up`` and ``gateway`` import theirs
inside their functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from orchestrator.cli.envs import cmd_envs_build, cmd_envs_list
from orchestrator.cli.jobs import cmd_jobs_cancel, cmd_jobs_list, cmd_jobs_result, cmd_jobs_submit, cmd_jobs_watch
from orchestrator.cli.models import cmd_models_tiny
from orchestrator.cli.pools import cmd_call, cmd_down, cmd_pools_restart, cmd_sessions, cmd_status
from orchestrator.cli.programs import (
    cmd_programs_list,
    cmd_programs_promote,
    cmd_programs_register,
    cmd_programs_run,
    cmd_programs_show,
)
from orchestrator.cli.render import say
from orchestrator.cli.server import cmd_gateway, cmd_up
from orchestrator.errors import OrchestratorError

Command = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def add_command(sub: Subparsers, name: str, fn: Command, client: bool = True) -> argparse.ArgumentParser:
    """A command running ``fn``, its help taken from ``fn``'s docstring; a client command also gets ``--url``."""
    doc = fn.__doc__ or ""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=doc.split("\n")[0], description=doc)
    parser.set_defaults(fn=fn)
    if client:
        parser.add_argument(
            "--url", default=None, help="gateway URL (default: $ORCHESTRATOR_URL or http://127.0.0.1:8000)"
        )
    return parser


def add_op_arguments(parser: argparse.ArgumentParser) -> None:
    """``POOL OP key=value...``, as ``call`` and ``jobs submit`` take them."""
    parser.add_argument("pool")
    parser.add_argument("op")
    parser.add_argument("args", nargs="*", help="key=value arguments (values may be JSON)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command has --help)."""
    parser = argparse.ArgumentParser(prog="orchestrator", description="Supervised pools of Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = add_command(sub, "up", cmd_up, client=False)
    gateway = add_command(sub, "gateway", cmd_gateway, client=False)
    for server in (up, gateway):
        server.add_argument("--address", default=None, help="Ray cluster address (default: embedded / the local one)")
    up.add_argument("--config", default="pools.yaml", help="pools file (default: pools.yaml)")
    up.add_argument("--host", default=None, help="gateway bind address (default: gateway.host, 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="gateway port (default: gateway.port, 8000)")
    gateway.add_argument("--namespace", default="orchestrator", help="Ray namespace of the orchestrator")
    gateway.add_argument(
        "--config", default=None, help="pools file whose `gateway` section applies (tokens, hosts, origins, limits)"
    )
    gateway.add_argument("--host", default=None, help="bind address (default: gateway.host, 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=None, help="port (default: gateway.port, 8000; 0 picks one)")
    gateway.add_argument("--max-body", type=int, default=None, help="request body limit in bytes (gateway.max_body)")
    gateway.add_argument("--stop-parent", action="store_true", help="POST /v1/shutdown stops the parent `up`")

    add_command(sub, "down", cmd_down)
    status = add_command(sub, "status", cmd_status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--watch", action="store_true", help="redraw the table in place until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch (default 2)")
    add_op_arguments(add_command(sub, "call", cmd_call))
    sessions = add_command(sub, "sessions", cmd_sessions)
    sessions.add_argument("--pool", default=None)
    pools = sub.add_parser("pools", help="Manage pools: restart a failed one.")
    pools_sub = pools.add_subparsers(dest="pools_command", required=True)
    add_command(pools_sub, "restart", cmd_pools_restart).add_argument("name", help="the pool's name")

    models = sub.add_parser("models", help="Build models that need no download.")
    kinds = models.add_subparsers(dest="kind", required=True)
    tiny = add_command(kinds, "tiny", cmd_models_tiny, client=False)
    tiny.add_argument("--out", type=Path, default=None, help="folder (default: ~/.cache/orchestrator/models/tiny)")

    envs = sub.add_parser("envs", help="Per-pool virtualenvs (env_manager: venv): build, list.")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True)
    build = add_command(envs_sub, "build", cmd_envs_build, client=False)
    build.add_argument("pools", nargs="*", metavar="POOL", help="pools to build (default: every venv pool)")
    listing_envs = add_command(envs_sub, "list", cmd_envs_list, client=False)
    for env_command in (build, listing_envs):
        env_command.add_argument("--config", default="pools.yaml", help="pools file (default: pools.yaml)")

    jobs = sub.add_parser("jobs", help="Long-running jobs: submit, watch, list, cancel, result.")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = add_command(jobs_sub, "submit", cmd_jobs_submit)
    add_op_arguments(submit)
    submit.add_argument("--max-retries", type=int, default=None, help="re-runs after the actor dies")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    add_command(jobs_sub, "watch", cmd_jobs_watch).add_argument("job_id")
    listing = add_command(jobs_sub, "list", cmd_jobs_list)
    listing.add_argument("--pool", default=None)
    listing.add_argument("--status", default=None, help="queued|running|retrying|succeeded|failed|cancelled")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument("--limit", type=int, default=None, help="at most this many (default 100)")
    listing.add_argument("--after", default=None, help="the page after this job id (the last one listed)")
    add_command(jobs_sub, "cancel", cmd_jobs_cancel).add_argument("job_id")
    result = add_command(jobs_sub, "result", cmd_jobs_result)
    result.add_argument("job_id")
    result.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: until it ends)")

    programs = sub.add_parser("programs", help="Registered DSPy programs: list, show, register, run, promote.")
    programs_sub = programs.add_subparsers(dest="programs_command", required=True)
    add_command(programs_sub, "list", cmd_programs_list).add_argument("--json", action="store_true")
    show = add_command(programs_sub, "show", cmd_programs_show)
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON (with each version's state)")
    register = add_command(programs_sub, "register", cmd_programs_register)
    register.add_argument("name")
    register.add_argument("--job", default=None, help="a succeeded optimize job's id")
    register.add_argument("--program", default=None, help='a program as JSON: {"class", "init", "state"}')
    register.add_argument("--model", default=None, help="the model it calls (pool/model, or an endpoint as JSON)")
    run = add_command(programs_sub, "run", cmd_programs_run)
    run.add_argument("name")
    run.add_argument("inputs", nargs="*", help="key=value inputs of forward (values may be JSON)")
    run.add_argument("--version", type=int, default=None, help="this version instead of the live one")
    run.add_argument("--trace", action="store_true", help="also print each predictor's inputs and outputs")
    run.add_argument("--stream", action="store_true", help="show each module as it starts")
    run.add_argument("--json", action="store_true", help="print the whole answer (name, version, outputs)")
    promote = add_command(programs_sub, "promote", cmd_programs_promote)
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orchestrator`` command: 2 when the orchestrator reports an error."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except OrchestratorError as exc:
        say(f"error {exc}")
        return 2


__all__ = ["build_parser", "main"]
