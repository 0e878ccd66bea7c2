"""Deployed programs: the RAG example optimized by the heavy pool, registered as versions, served by a
two-actor ``programs`` pool over HTTP (a real uvicorn gateway), the SDK (sync and async), the CLI and
in-process; promoted and rolled back; batched, streamed and traced; its actor SIGKILLed; everything
restarted on the same state_dir. The oracle model answers "What is A plus B?" right only when the
predictor's instructions say MAGIC, so which version answered is visible in its outputs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator
from orchestrator.cli.render import status_table
from orchestrator.client import AsyncClient, Client
from tests.conftest import (
    ROOT,
    GatewayProcess,
    Start,
    actors,
    heavy_pool,
    kill_pid,
    log_lines,
    retrieval_pool,
    scrape,
    value,
    wait_until,
)
from tests.kit.oracle import MAGIC

pytest.importorskip("dspy", reason="the heavy and programs pools need dspy: pip install -e '.[heavy]'")
pytest.importorskip("sentence_transformers", reason="the retrieval extra is not installed")

CLASS = "examples.rag.program:RAG"
QUESTION = "What is 2 plus 3?"
PLAIN = "Answer the question from the context."
RUNS = 24


def pools() -> dict[str, Any]:
    small = {"num_cpus": 0.25}
    return {
        "oracle": {"worker": "tests.kit.oracle:Oracle", "resources": small, "limits": {"concurrency": 64}},
        "slow": {
            "worker": "tests.kit.oracle:Oracle",
            "resources": small,
            "limits": {"concurrency": 64},
            "options": {"task_delay_s": 0.5},
        },
        "retrieval": retrieval_pool(),
        "heavy": heavy_pool(),
        "programs": {
            "worker": "workers.programs:Programs",
            "env_manager": "none",
            "size": {"min": 2, "max": 2},
            "resources": small,
            "limits": {"concurrency": 16, "queue": 256},
            "health": {"period_s": 0.5},
            "options": {"model": "oracle/oracle", "threads": 8},
        },
    }


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("programs-state")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, state_dir: Path) -> orchestrator.Orchestrator:
    return start_orchestrator(pools(), base_dir=ROOT, code=["examples"], state_dir=str(state_dir))


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def job_id(orch: orchestrator.Orchestrator) -> str:
    """The RAG example optimized by class (a small MIPROv2 run) on a small corpus of stdlib docstrings."""
    from examples.rag.data import corpus, devset, trainset

    docs = corpus()[:12]
    orch.submit("retrieval", "corpus_build", name="pydocs", docs=docs).result(timeout=300)
    budget = {"num_trials": 2, "num_candidates": 2, "max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    job = orch.submit(
        "heavy",
        "optimize",
        program={"class": CLASS, "init": {"corpus": "pydocs", "k": 2}},
        trainset=trainset()[:4],
        valset=devset()[:3],
        metric="examples.rag.program:right_module",
        optimizer=budget,
    )
    job.result(timeout=300)
    return job.id


def with_check_instructions(state: dict[str, Any], instructions: str) -> dict[str, Any]:
    """The program state with its final predictor's instructions replaced (the oracle reads them)."""
    changed = copy.deepcopy(state)
    changed["check"]["signature"]["instructions"] = instructions
    return changed


def answer_under(state: dict[str, Any]) -> str:
    """What the oracle answers QUESTION under this state's final predictor."""
    return "5" if "MAGIC" in state["check"]["signature"]["instructions"] else "no idea"


def cli(gateway: GatewayProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "programs", *args, "--url", gateway.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def versions(orch: orchestrator.Orchestrator, http: httpx.Client, job_id: str) -> dict[int, str]:
    """Version 1 from the optimize job (over HTTP), version 2 from its state with the other instruction (SDK)."""
    registered = http.post("/v1/programs", json={"name": "rag", "job_id": job_id})
    assert registered.status_code == 201, registered.text
    assert registered.json() == {"name": "rag", "version": 1, "live": 1}
    first = orch.program("rag", states=True)["versions"][0]
    assert first["class"] == CLASS and first["job_id"] == job_id and first["digest"].startswith("sha256:")
    assert first["predictors"] == ["answer.predict", "check"] and first["inputs"] == ["question"]
    flipped = PLAIN if "MAGIC" in first["state"]["check"]["signature"]["instructions"] else MAGIC
    second = with_check_instructions(first["state"], flipped)
    with Client(str(http.base_url)) as client:
        answer = client.register_program("rag", program={"class": CLASS, "init": first["init"], "state": second})
    assert answer == {"name": "rag", "version": 2, "live": 1}  # registering does not promote
    expected = {1: answer_under(first["state"]), 2: answer_under(second)}
    assert expected[1] != expected[2]
    return expected


def run_http(http: httpx.Client, version: int | None = None, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/v1/programs/rag/run", json={"question": QUESTION, **body}, params={"version": version} if version else None
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_versions_run_everywhere_promote_and_roll_back(
    orch: orchestrator.Orchestrator, http: httpx.Client, gateway: GatewayProcess, versions: dict[int, str]
) -> None:
    live = run_http(http)
    assert live["version"] == 1 and live["outputs"]["answer"] == versions[1], live

    # promote with the CLI; every surface now answers from version 2
    assert "version 2 is live" in cli(gateway, "promote", "rag", "2")
    assert orch.run_program("rag", {"question": QUESTION})["outputs"]["answer"] == versions[2]
    with Client(gateway.url) as client:
        assert client.run_program("rag", {"question": QUESTION}) | {"outputs": None} == {
            "name": "rag",
            "version": 2,
            "outputs": None,
        }
    assert run_http(http)["outputs"]["answer"] == versions[2]
    assert run_http(http, version=1)["outputs"]["answer"] == versions[1]  # ?version=1 still runs version 1's state
    shown = json.loads(cli(gateway, "run", "rag", f"question={QUESTION}", "--json"))
    assert shown["version"] == 2 and shown["outputs"]["answer"] == versions[2]

    # roll back with the async SDK
    async def roll_back() -> dict[str, Any]:
        async with AsyncClient(gateway.url) as client:
            promoted = await client.promote_program("rag", 1)
            assert promoted == {"name": "rag", "live": 1, "previous": 2}
            return await client.run_program("rag", {"question": QUESTION})

    after = asyncio.run(roll_back())
    assert after["version"] == 1 and after["outputs"]["answer"] == versions[1]
    listed = http.get("/v1/programs").json()["programs"]
    assert [(p["name"], p["live"], p["versions"]) for p in listed] == [("rag", 1, 2)]
    table = cli(gateway, "show", "rag")
    assert "* 1" in table and "  2" in table and CLASS in table


def test_a_trace_names_each_predictor_with_its_inputs_and_outputs(http: httpx.Client, versions: dict[int, str]) -> None:
    traced = run_http(http, version=2, trace=True)
    steps = traced["trace"]
    assert [step["predictor"] for step in steps] == ["answer.predict", "check"]
    assert all(step["inputs"]["question"] == QUESTION for step in steps)
    assert steps[1]["inputs"]["draft"] == steps[0]["outputs"]["answer"]  # the draft the check predictor read
    assert steps[1]["outputs"]["answer"] == traced["outputs"]["answer"] == versions[2]
    assert len(steps[0]["inputs"]["context"]) == 2  # k=2 passages from the corpus reached the predictor


def test_a_batch_of_64_comes_back_in_order_spread_over_both_actors(
    orch: orchestrator.Orchestrator, http: httpx.Client, versions: dict[int, str]
) -> None:
    magic = next(v for v, answer in versions.items() if answer == "5")
    before = {a["name"]: a["calls"] for a in actors(orch, "programs")}
    rows = [{"question": f"What is {i} plus 1000?"} for i in range(64)]
    response = http.post("/v1/programs/rag/batch", params={"version": magic}, json={"inputs": rows})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [{"answer": str(i + 1000)} for i in range(64)] or [
        o["answer"] for o in response.json()["outputs"]
    ] == [str(i + 1000) for i in range(64)]
    wait_until(lambda: all(a["calls"] > before.get(a["name"], 0) for a in actors(orch, "programs")), 10, "both ran")
    inproc = orch.batch_program("rag", rows[:5], version=magic)
    assert [o["answer"] for o in inproc["outputs"]] == [str(i + 1000) for i in range(5)]


def test_a_stream_sends_a_status_event_per_module_then_the_outputs(
    http: httpx.Client, versions: dict[int, str]
) -> None:
    messages: list[tuple[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    with http.stream("POST", "/v1/programs/rag/run", json={"question": QUESTION}, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                messages.append((kind, json.loads(line.partition(":")[2])))
    statuses = [data["module"] for kind, data in messages if kind == "event"]
    assert {"RAG", "retrieve", "answer", "answer.predict", "check"} <= set(statuses), statuses
    assert statuses.index("answer.predict") < statuses.index("check")  # in the order they ran
    kind, last = messages[-1]
    assert kind == "result" and last["result"]["outputs"]["answer"] == versions[1] and last["result"]["version"] == 1


def test_runs_are_counted_timed_and_logged_per_version_and_status_shows_what_each_actor_holds(
    orch: orchestrator.Orchestrator, versions: dict[int, str]
) -> None:
    marker = f"What is 7 plus {uuid.uuid4().int % 10**9}?"
    orch.run_program("rag", {"question": marker}, version=2)
    wait_until(
        lambda: (
            value(scrape(), "ray_orchestrator_program_runs_total", program="rag", version="2", outcome="ok") >= 1
            and value(scrape(), "ray_orchestrator_program_run_seconds_count", program="rag", version="2") >= 1
        ),
        30,
        "version 2's runs in the metrics export",
    )
    lines = log_lines("program=rag version=2")
    assert any("pool=programs actor=programs-" in line and "op=run" in line for line in lines), lines[:3]
    both = wait_until(  # both actors hold both versions (status reads them at each health ping)
        lambda: (table := status_table([orch.status()["programs"]])).count("rag v1,2 live 1") == 2 and table,
        10,
        "both actors' loaded versions in orchestrator status",
    )
    assert "holds" in both


def test_bad_input_is_a_4xx_naming_the_field_and_registers_nothing(
    orch: orchestrator.Orchestrator, http: httpx.Client, versions: dict[int, str], job_id: str
) -> None:
    build = orch.jobs(pool="retrieval")[0]["id"]
    bad_state = {"bogus": {"demos": []}}
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("POST", "/v1/programs/nope/run", {"question": QUESTION}, 404, "program_not_found"),
        ("GET", "/v1/programs/nope", None, 404, "program_not_found"),
        ("POST", "/v1/programs/rag/run?version=9", {"question": QUESTION}, 404, "program_not_found"),
        ("POST", "/v1/programs/rag/promote", {"version": 9}, 404, "program_not_found"),
        ("POST", "/v1/programs/rag/promote", {"version": "two"}, 422, "version"),
        ("POST", "/v1/programs", {"name": "rag", "job_id": build}, 422, "job_id"),
        ("POST", "/v1/programs", {"name": "rag", "job_id": "job-nope"}, 404, "job_not_found"),
        ("POST", "/v1/programs", {"name": "rag", "program": {"class": "examples.nope:RAG"}}, 422, "program.class"),
        ("POST", "/v1/programs", {"name": "rag", "program": {"class": "json:JSONDecoder"}}, 422, "program.class"),
        (
            "POST",
            "/v1/programs",
            {"name": "rag", "program": {"class": CLASS, "state": bad_state}},
            422,
            "program.state.bogus",
        ),
        (
            "POST",
            "/v1/programs",
            {"name": "rag", "program": {"class": CLASS, "init": {"kk": 1}}},
            422,
            "program.init.kk",
        ),
        ("POST", "/v1/programs", {"name": "../x", "program": {"class": CLASS}}, 422, "name"),
        ("POST", "/v1/programs", {"name": "rag", "program": {"class": CLASS}, "model": "oracle/nope"}, 422, "model"),
        ("POST", "/v1/programs", {"name": "rag", "program": {"class": CLASS}, "model": "nopool/x"}, 422, "model"),
        ("POST", "/v1/programs", {"name": "rag"}, 422, "program"),
        ("POST", "/v1/programs/rag/run", {}, 422, "question"),
        ("POST", "/v1/programs/rag/run", {"question": QUESTION, "colour": "red"}, 422, "colour"),
        ("POST", "/v1/programs/rag/batch", {"inputs": [{"question": "a"}, {"q": "b"}]}, 422, "inputs.1.q"),
        ("POST", "/v1/programs/rag/batch", {"inputs": [{"question": "a"}, "b"]}, 422, "inputs.1"),
    ]
    before = orch.program("rag")
    for method, path, body, status, named in cases:
        response = http.request(method, path, json=body)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()["error"]
        fields = [d.get("field") for d in error.get("detail") or []]
        assert named in (error["code"], *fields) or named in error["message"], (path, body, error)
    assert orch.program("rag") == before and [p["name"] for p in orch.programs()] == ["rag"]  # nothing registered
    assert orch.call("oracle", "calls")["task"] >= 0  # the oracle still answers (nothing above reached it)


def test_a_signature_program_from_its_optimize_job_is_served(
    orch: orchestrator.Orchestrator, http: httpx.Client, versions: dict[int, str]
) -> None:
    rows = json.loads((ROOT / "examples" / "arith.json").read_text())[:6]
    budget = {"num_trials": 3, "num_candidates": 2, "max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    job = orch.submit("heavy", "optimize", program={"signature": "question -> answer"}, trainset=rows, optimizer=budget)
    assert job.result(timeout=300)["score"] == 1.0
    registered = http.post("/v1/programs", json={"name": "adder", "job_id": job.id})
    assert registered.status_code == 201 and registered.json()["version"] == 1, registered.text
    version = orch.program("adder", states=True)["versions"][0]
    assert version["signature"] == "question -> answer" and version["digest"] is None
    assert "MAGIC" in version["state"]["signature"]["instructions"]  # the job's optimized instruction
    answered = http.post("/v1/programs/adder/run", json={"question": "What is 20 plus 22?"})
    assert answered.json()["outputs"] == {"answer": "42"}, answered.text
    missing = http.post("/v1/programs/adder/run", json={"query": "What is 1 plus 1?"})
    assert missing.status_code == 422 and missing.json()["error"]["detail"][0]["field"] == "query", missing.text


def test_a_killed_actor_is_replaced_with_every_version_and_runs_in_flight_are_retried(
    orch: orchestrator.Orchestrator, versions: dict[int, str]
) -> None:
    # a version bound to the slow oracle (each answer takes 0.5 s): the kill lands while runs are in flight
    magic = next(v for v, answer in versions.items() if answer == "5")
    state = next(v for v in orch.program("rag", states=True)["versions"] if v["version"] == magic)
    program = {"class": CLASS, "init": state["init"], "state": state["state"]}
    assert orch.register_program("slow-rag", program=program, model="slow/oracle")["version"] == 1
    victim = actors(orch, "programs")[0]
    results: list[Any] = []

    def one(i: int) -> None:
        try:
            results.append((i, orch.run_program("slow-rag", {"question": f"What is {i} plus 1?"})))
        except Exception as exc:
            results.append((i, exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(RUNS)]
    for thread in threads:
        thread.start()
    wait_until(lambda: orch.call("slow", "calls")["task"] >= RUNS // 2, 30, "the runs to reach the slow oracle")
    kill_pid(victim["pid"])
    for thread in threads:
        thread.join(120)
    assert sorted(i for i, r in results if not isinstance(r, Exception)) == list(range(RUNS)), results
    assert all(r["outputs"]["answer"] == str(i + 1) for i, r in results)
    # two LM calls per run; more than that: the runs the kill cut short ran again on the other actor
    assert orch.call("slow", "calls")["task"] > 2 * RUNS
    replaced = wait_until(
        lambda: next(
            (
                a
                for a in actors(orch, "programs")
                if a["pid"] not in (None, victim["pid"]) and a["index"] == victim["index"] and a["holds"]
            ),
            None,
        ),
        60,
        "the replacement actor",
    )
    assert replaced["restarts"] > victim["restarts"]
    loaded = {name: {"versions": [1], "live": 1} for name in ("adder", "slow-rag")}
    loaded["rag"] = {"versions": [1, 2], "live": 1}
    assert replaced["holds"]["programs"] == loaded
    with_version = orch.run_program("slow-rag", {"question": "What is 4 plus 4?"})
    assert with_version["outputs"]["answer"] == "8"


def test_everything_restarted_on_the_same_state_dir_comes_back(
    orch: orchestrator.Orchestrator, start_orchestrator: Start, state_dir: Path, versions: dict[int, str]
) -> None:
    orch.shutdown(drain_s=1.0)
    again = start_orchestrator(pools(), base_dir=ROOT, code=["examples"], state_dir=str(state_dir))
    shown = again.program("rag")
    assert shown["live"] == 1 and [v["version"] for v in shown["versions"]] == [1, 2]
    listed = [(p["name"], p["live"], p["versions"]) for p in again.programs()]
    assert listed == [("adder", 1, 1), ("rag", 1, 2), ("slow-rag", 1, 1)]
    assert again.run_program("rag", {"question": QUESTION})["outputs"]["answer"] == versions[1]
    assert again.run_program("rag", {"question": QUESTION}, version=2)["outputs"]["answer"] == versions[2]
