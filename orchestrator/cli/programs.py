"""The ``programs`` commands: ``list``, ``show``, ``register``, ``run``, ``promote``.

Client commands like those of ``pools``: httpx and pydantic only.
"""

from __future__ import annotations

import argparse
import json

from orchestrator.cli.pools import open_client, parse_arguments
from orchestrator.cli.render import age, as_json, format_table, say
from orchestrator.errors import InvalidArguments


def cmd_programs_list(args: argparse.Namespace) -> int:
    """List registered programs: name, live version, versions, latest."""
    with open_client(args) as client:
        programs = client.programs()
    if args.json:
        say(as_json(programs, indent=2))
        return 0
    rows = [[p["name"], str(p["live"]), str(p["versions"]), str(p["latest"]), age(p["created"])] for p in programs]
    say(format_table(["program", "live", "versions", "latest", "age"], rows, title="programs"))
    return 0


def cmd_programs_show(args: argparse.Namespace) -> int:
    """Show a program's versions (class, digest, model, score, source job) and which is live."""
    with open_client(args) as client:
        program = client.program(args.name, states=args.json)
    if args.json:
        say(as_json(program, indent=2))
        return 0
    rows = [
        [
            ("* " if v["version"] == program["live"] else "  ") + str(v["version"]),
            str(v.get("class") or v.get("signature")),
            str(v.get("model") or "-"),
            "-" if v.get("score") is None else f"{v['score']:.3f}",
            str(v.get("job_id") or "-"),
            str(v.get("digest") or "-")[:19],
            age(v["created"]),
        ]
        for v in program["versions"]
    ]
    columns = ["version", "program", "model", "score", "job", "digest", "age"]
    say(format_table(columns, rows, title=f"{program['name']} (* live)"))
    return 0


def cmd_programs_register(args: argparse.Namespace) -> int:
    """Register a new version from a succeeded optimize job (--job) or a program JSON (--program); prints it."""
    program = None
    if args.program is not None:
        try:
            program = json.loads(args.program)
        except json.JSONDecodeError as exc:
            raise InvalidArguments(f"--program: not JSON: {exc}") from None
    model = None
    if args.model is not None:
        try:
            model = json.loads(args.model)
        except json.JSONDecodeError:
            model = args.model
    with open_client(args) as client:
        say(as_json(client.register_program(args.name, program=program, job_id=args.job, model=model)))
    return 0


def cmd_programs_run(args: argparse.Namespace) -> int:
    """Run a program on key=value inputs (values may be JSON); prints its outputs. --stream shows each module."""
    inputs = parse_arguments(args.inputs)
    with open_client(args) as client:
        if args.stream:
            with client.stream_program(args.name, inputs, version=args.version) as stream:
                for event in stream:
                    say(f"… {event.get('status', event)}")
                answer = stream.result
        else:
            answer = client.run_program(args.name, inputs, version=args.version, trace=args.trace)
    say(as_json(answer if args.trace or args.json else answer["outputs"], indent=2))
    return 0


def cmd_programs_promote(args: argparse.Namespace) -> int:
    """Make a version live (promoting an older one rolls back)."""
    with open_client(args) as client:
        answer = client.promote_program(args.name, args.version)
    say(f"{answer['name']}: version {answer['live']} is live (was {answer['previous']})")
    return 0
