"""DSPy's BootstrapFinetune on the heavy pool (``optimizer: {"name": "bootstrap_finetune"}``), on a real local
Ray: the oracle model is the teacher whose successful traces become the training data, the offline tiny model
(a light pool) is the task model that learns them; a SIGKILL mid-training; the refusals at submit."""

from __future__ import annotations

import json
from typing import Any

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import ROOT, Start, actors, events_killing_once
from tests.kit import tuning

pytest.importorskip("dspy", reason="the heavy pool needs dspy: pip install -e '.[heavy]'")
pytest.importorskip("trl", reason="fine-tuning needs trl: pip install -e '.[heavy]'")

ROWS = json.loads((ROOT / "examples" / "arith.json").read_text())[:4]
PROGRAM = {"class": "tests.kit.programs:Solve"}
FAST = {"max_steps": 8, "batch_size": 2, "learning_rate": 0.01, "save_steps": 3}
BFT = {"name": "bootstrap_finetune", "teacher": "oracle/oracle", "hyperparameters": FAST, "num_threads": 2}


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tmp_path_factory: pytest.TempPathFactory) -> orchestrator.Orchestrator:
    from orchestrator.models.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
    pools = tuning.pools(tiny)  # llm (the task model) and heavy
    # the class comes from an installed package the pool's options allow (not pools.yaml's code:)
    pools["heavy"]["options"]["programs"] = ["tests"]
    oracle = {"worker": "tests.kit.oracle:Oracle", "resources": {"num_cpus": 0.25}}
    return start_orchestrator({**pools, "oracle": {**oracle, "options": {"task_fields": ["answer", "draft"]}}})


def evaluated(orch: orchestrator.Orchestrator, program: dict[str, Any], **model: str) -> dict[str, Any]:
    done: dict[str, Any] = orch.submit("heavy", "evaluate", program=program, devset=ROWS[:2], **model).result(120)
    assert len(done["results"]) == 2 and all(row["prediction"]["answer"] for row in done["results"]), done
    return done


def greedy(orch: orchestrator.Orchestrator, model: str) -> str:
    """The model's greedy answer to the first training prompt (the draft predictor's, as the pool's adapter
    formats it: what the training rows hold)."""
    import dspy

    from tests.kit.programs import Solve

    prompt = dspy.JSONAdapter().format(Solve().draft.signature, demos=[], inputs={"question": ROWS[0]["question"]})
    reply = orch.call("llm", "chat", model=model, messages=prompt, max_tokens=12, temperature=0)
    return str(reply["choices"][0]["text"])


def test_bootstrap_finetune_trains_the_task_model_on_the_teachers_traces(orch: orchestrator.Orchestrator) -> None:
    before = orch.call("oracle", "calls")["task"]
    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer=BFT)
    events = [event for _, event in job.events()]
    result = job.result(timeout=300)
    # Every example passed with the teacher: two predictor calls each, one training row per call.
    assert orch.call("oracle", "calls")["task"] - before == 2 * len(ROWS)
    assert [e["stage"] for e in events if "stage" in e] == ["bootstrap", "finetune"]
    assert result["traces"] == {"passed": len(ROWS), "examples": len(ROWS), "rows": 2 * len(ROWS)}
    assert [e["step"] for e in events if "step" in e] == list(range(1, FAST["max_steps"] + 1))

    program = result["program"]
    model = result["model"]
    assert model.startswith("llm/bft-") and program["model"] == model, result
    assert model.split("/")[1] in [m["id"] for m in orch.call("llm", "models")]  # published
    assert all(p["demos"] == [] for p in program["state"].values())  # the adapter learned them
    # The program is bound to the fine-tuned model: with no model argument it runs there (a job's model
    # argument still overrides it), and that model is the adapter trained on the traces' rows.
    assert evaluated(orch, program)["model"] == model
    assert evaluated(orch, program, model="llm/tiny")["model"] == "llm/tiny"
    assert greedy(orch, model) != greedy(orch, "llm/tiny")


def test_a_killed_bootstrap_finetune_resumes_training_without_collecting_traces_again(
    orch: orchestrator.Orchestrator,
) -> None:
    before = orch.call("oracle", "calls")["task"]
    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer=BFT)
    events, pid = events_killing_once(orch, job, "heavy", lambda event: event.get("step") == 5)
    result = job.result(timeout=300)
    assert actors(orch, "heavy")[0]["pid"] != pid and job.status()["attempts"] == 2, job.status()
    assert orch.call("oracle", "calls")["task"] - before == 2 * len(ROWS)  # the teacher ran once
    assert [e["stage"] for e in events if "stage" in e] == ["bootstrap", "finetune"]  # each once
    assert [e["step"] for e in events if "step" in e] == list(range(1, FAST["max_steps"] + 1))  # none twice
    assert result["steps"] == FAST["max_steps"] and result["model"].startswith("llm/bft-")
    assert evaluated(orch, result["program"])["model"] == result["model"]  # and it answers through the adapter


def test_no_successful_trace_fails_the_job_saying_so(orch: orchestrator.Orchestrator) -> None:
    plain = {"signature": "question -> answer"}  # no MAGIC: the oracle answers "no idea", the metric fails all
    job = orch.submit("heavy", "optimize", program=plain, trainset=ROWS[:2], optimizer=BFT)
    with pytest.raises(errors.OrchestratorError, match="no training data: the metric passed none of the 2"):
        job.result(timeout=120)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"optimizer": {**BFT, "num_trials": 3}}, "optimizer.num_trials"),
        ({"optimizer": {"name": "mipro", "teacher": "oracle/oracle"}}, "optimizer.teacher"),
        ({"optimizer": {**BFT, "hyperparameters": {"max_steps": 0}}}, "optimizer.hyperparameters.max_steps"),
        ({"optimizer": {**BFT, "lora": {"rank": 8}}}, "optimizer.lora.rank"),
        ({"optimizer": {**BFT, "teacher": "nowhere/model"}}, "optimizer.teacher"),
        ({"model": "oracle/oracle"}, "model"),  # a pool model, but one without weights to fine-tune
        ({"model": {"model": "openai/gpt-4o-mini"}}, "model"),
        ({"program": {**PROGRAM, "model": "llm/missing"}}, "program.model"),
    ],
)
def test_bad_bootstrap_finetune_jobs_are_refused_at_submit(
    orch: orchestrator.Orchestrator, change: dict[str, Any], field: str
) -> None:
    before = len(orch.jobs("heavy"))
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("heavy", "optimize", **{"program": PROGRAM, "trainset": ROWS, "optimizer": BFT, **change})
    fields = [str(d.get("field", "")) for d in refused.value.detail or []]
    assert fields and fields[0] == field, refused.value
    assert len(orch.jobs("heavy")) == before
