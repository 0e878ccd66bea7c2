"""The client commands on pools: ``status``, ``call``, ``sessions``, ``down``.

They talk to a running gateway through the SDK, so they need httpx and
pydantic only: nothing here (nor in what it imports) may import Ray, the
gateway's web stack, yaml, psutil or rich (tests/test_client_only.py checks).
``open_client`` and ``parse_arguments`` serve the ``jobs`` commands as well.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, Any

import httpx

from orchestrator.cli.render import as_json, say, sessions_table, status_table
from orchestrator.errors import InvalidArguments, OrchestratorError

if TYPE_CHECKING:
    from orchestrator.client import Client


def open_client(args: argparse.Namespace) -> Client:
    """A client for ``--url``, else ``$ORCHESTRATOR_URL``; the token is ``$ORCHESTRATOR_TOKEN`` either way."""
    from orchestrator.client import Client

    if args.url:
        return Client(args.url, token=os.environ.get("ORCHESTRATOR_TOKEN") or None)
    return Client.from_env()


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


def cmd_status(args: argparse.Namespace) -> int:
    """Show pools, actors, state, sessions, queue, what each actor runs, restarts and memory."""
    with open_client(args) as client:
        if args.watch:
            if args.interval <= 0:
                raise InvalidArguments(f"--interval must be more than 0 seconds, got {args.interval:g}")
            return watch_status(client, args.interval)
        pools = client.pools()
    say(as_json(pools, indent=2) if args.json else status_table(pools))
    return 0


CLEAR = "\x1b[H\x1b[2J"  # ANSI: cursor home, erase the screen


def watch_status(client: Client, interval: float) -> int:
    """Redraw the status table in place every ``interval`` seconds until Ctrl-C (which exits 0).

    A failed poll (the gateway restarting, say) is shown in the frame and retried at the next one.
    """
    try:
        while True:
            try:
                frame = status_table(client.pools())
            except (OrchestratorError, httpx.HTTPError) as exc:
                frame = f"error {exc}"
            stamp = time.strftime("%H:%M:%S")
            say(f"{CLEAR}every {interval:g}s: orchestrator status at {client.url}   {stamp}\n\n{frame}")
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_call(args: argparse.Namespace) -> int:
    """Call an op (key=value arguments, JSON values accepted); a streaming op prints events as they come."""
    arguments = parse_arguments(args.args)
    with open_client(args) as client:
        ops = client.pool(args.pool)["ops"]
        if args.op in ops and ops[args.op]["stream"]:
            with client.stream(args.pool, args.op, **arguments) as stream:
                for event in stream:
                    say(as_json(event))
            say(as_json({"result": stream.result}))
        else:
            say(as_json(client.call(args.pool, args.op, **arguments)))
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """List open sessions."""
    with open_client(args) as client:
        say(sessions_table(client.sessions(args.pool)))
    return 0


def cmd_pools_restart(args: argparse.Namespace) -> int:
    """Start a failed pool again (its sessions are restored from their checkpoints)."""
    with open_client(args) as client:
        answer = client.restart_pool(args.name)
    say(f"pool {args.name}: {answer['message']}")
    return 0 if answer["restarted"] else 1


def cmd_down(args: argparse.Namespace) -> int:
    """Ask the running server to drain, checkpoint sessions and stop (it exits when done)."""
    with open_client(args) as client:
        client.shutdown()
        say(f"asked the orchestrator at {client.url} to shut down")
    return 0
