"""The ``jobs`` commands: ``submit``, ``watch``, ``list``, ``cancel``, ``result``.

Client commands like those of ``pools``: httpx and pydantic only.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any, Protocol

from orchestrator.cli.pools import open_client, parse_arguments
from orchestrator.cli.render import as_json, event_lines, jobs_table, say


class JobHandle(Protocol):
    """What watching needs of the SDK's job handle."""

    id: str

    def events(self) -> Iterator[tuple[int, Any]]:
        """``(seq, event)`` until the job ends."""
        ...

    def status(self) -> dict[str, Any]:
        """The job's record."""
        ...


def watch(job: JobHandle) -> int:
    """Print the job's events as they come, then how it ended; 0 if it succeeded, else 1."""
    for seq, event in job.events():
        for line in event_lines(seq, event):
            say(line)
    record = job.status()
    say(f"job {job.id}: {record['status']}")
    if record["status"] == "succeeded":
        say(as_json(record["result"]))
        return 0
    if record.get("error"):
        say(f"error {record['error']['code']}: {record['error']['message']}")
    return 1


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    """Submit a job (key=value arguments); prints its id. --watch follows it."""
    with open_client(args) as client:
        job = client.submit(args.pool, args.op, _max_retries=args.max_retries, **parse_arguments(args.args))
        say(job.id)
        return watch(job) if args.watch else 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    """Follow a job: one line per event, a progress bar for progress(done=, total=), then its result."""
    with open_client(args) as client:
        return watch(client.job(args.job_id))


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """List jobs (newest first)."""
    with open_client(args) as client:
        jobs = client.jobs(pool=args.pool, status=args.status, limit=args.limit, after=args.after)
    say(as_json(jobs, indent=2) if args.json else jobs_table(jobs))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel a job (a finished job is left as it is)."""
    with open_client(args) as client:
        say(client.job(args.job_id).cancel()["message"])
    return 0


def cmd_jobs_result(args: argparse.Namespace) -> int:
    """Print a job's result (waits up to --timeout seconds); its error if it failed."""
    with open_client(args) as client:
        say(as_json(client.job(args.job_id).result(timeout=args.timeout)))
    return 0
