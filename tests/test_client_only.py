"""The client install (httpx and pydantic only) works: the SDK imports and the CLI's client commands run.

Each check runs in a subprocess whose import system refuses every server part
(ray, fastapi, starlette, uvicorn, yaml, psutil) and rich, as if they were not
installed. The refusing finder also records every attempt made by orchestrator
code, so an import that is tried and swallowed there (``try: import rich
except ImportError``) fails too; httpx probing for its optional rich is fine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from orchestrator.cli.render import format_table
from tests.conftest import ROOT, GatewayProcess, Start, toolbox

TOKEN = "client-only-token"

# Runs first in every subprocess; `refused` lists the blocked imports orchestrator code tried.
BLOCKER = """
import sys

BLOCKED = {"ray", "fastapi", "starlette", "uvicorn", "yaml", "psutil", "rich"}
refused = []


class RefuseServerParts:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "") if frame is not None else ""
            if importer.partition(".")[0] == "orchestrator":  # not httpx probing for its optional rich
                refused.append(f"{name} (from {importer})")
            raise ModuleNotFoundError(f"No module named {name!r} (refused: client install)", name=name)
        return None


loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
assert not loaded, f"already imported before the blocker: {loaded}"
sys.meta_path.insert(0, RefuseServerParts())
for name in sorted(BLOCKED):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(f"the blocker let {name} through")
refused.clear()
"""

IMPORTS = """
import orchestrator
import orchestrator.client
from orchestrator import AsyncClient, Client, OrchestratorError

assert Client.__name__ == "Client" and AsyncClient.__name__ == "AsyncClient"
assert issubclass(OrchestratorError, Exception)
assert not refused, f"the SDK tried to import {refused}"
try:
    orchestrator.start
except ImportError as exc:
    assert "ray" in str(exc), str(exc)
else:
    raise AssertionError("orchestrator.start imported without Ray")
print("ok")
"""

CLI = """
import json
import orchestrator.cli

code = orchestrator.cli.main(json.loads(sys.argv[1]))
sys.stdout.flush()
if refused:
    print(f"the CLI tried to import {refused}", file=sys.stderr)
    sys.exit(3)
sys.exit(code)
"""


def run_client_only(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter that refuses the server parts; argv as JSON in ``sys.argv[1]``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ORCHESTRATOR_URL")}
    env["ORCHESTRATOR_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + script, json.dumps(list(argv))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGV`` run as ``orchestrator.cli.main`` in a client-only interpreter."""
    return run_client_only(CLI, *argv)


@pytest.fixture(scope="module")
def gateway(start_orchestrator: Start) -> Iterator[GatewayProcess]:
    orch = start_orchestrator({"toolbox": toolbox()})
    server = GatewayProcess(orch.namespace, token=TOKEN)
    yield server
    server.stop()


def test_sdk_imports_without_server_parts() -> None:
    result = run_client_only(IMPORTS)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_client_commands_run_without_server_parts(gateway: GatewayProcess) -> None:
    url = ["--url", gateway.url]

    call = cli("call", "toolbox", "add", "a=1", "b=2", *url)
    assert call.returncode == 0, call.stdout + call.stderr
    assert call.stdout.strip() == "3"

    stream = cli("call", "toolbox", "ticker", "n=3", *url)
    assert stream.returncode == 0, stream.stdout + stream.stderr
    assert [json.loads(line) for line in stream.stdout.splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}, {"result": 3}]

    bad = cli("call", "toolbox", "add", "a=x", *url)
    assert bad.returncode == 2 and "invalid_arguments" in bad.stdout, bad.stdout + bad.stderr

    status = cli("status", *url)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert any(line.startswith("toolbox (running;") for line in lines), status.stdout
    actor = next(line for line in lines if line.strip().startswith("toolbox-0"))
    assert actor.split()[1] == "ready"

    watch = cli("jobs", "submit", "toolbox", "trials", "n=3", *url, "--watch")
    assert watch.returncode == 0, watch.stdout + watch.stderr
    job_id, *events, ended, result = watch.stdout.splitlines()
    assert ended == f"job {job_id}: succeeded"
    assert json.loads(result) == {"total": 3, "started_from": 0}
    assert [line.split(" ", 1)[1] for line in events if "[" in line] == [
        "[###.......] 1/3",
        "[######....] 2/3",
        "[##########] 3/3",
    ]
    assert [json.loads(line.split(" ", 1)[1]) for line in events if "trial" in line] == [{"trial": t} for t in range(3)]


def test_tables_keep_every_character() -> None:
    long = "x" * 300
    table = format_table(("id", "state"), ["a heading across", ["a", long], ["bb", "ok"]], title="t")
    assert table.splitlines() == [
        "t",
        "id  state",
        "--  " + "-" * 300,
        "a heading across",
        "a   " + long,
        "bb  ok",
    ]
