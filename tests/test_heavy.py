"""The heavy pool on a real local Ray: MIPROv2 and GEPA as resumable jobs over the light pool's offline model
and a deterministic oracle model, evaluation, a SIGKILL mid-search, and the refusals at submit."""

from __future__ import annotations

import json
from typing import Any

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import ROOT, Start, actors, events_killing_once

pytest.importorskip("dspy", reason="the heavy pool needs dspy: pip install -e '.[heavy]'")
pytest.importorskip("optuna", reason="the heavy pool needs optuna: pip install -e '.[heavy]'")
pytest.importorskip("torch", reason="the light pool needs torch: pip install -e '.[light]' (CPU: torch==2.13.0)")

ROWS = json.loads((ROOT / "examples" / "arith.json").read_text())[:6]  # the README's toy task
PROGRAM = {"signature": "question -> answer"}
BUDGET = {
    "num_trials": 4,
    "num_candidates": 2,
    "max_bootstrapped_demos": 1,
    "max_labeled_demos": 1,
    "minibatch_size": 2,
    "minibatch_full_eval_steps": 2,
}
KINDS = ["minibatch", "minibatch", "full", "minibatch", "minibatch", "full"]  # 4 trials, a full score every 2
GEPA = {"name": "gepa", "reflection_minibatch_size": 2, "use_merge": False}


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tmp_path_factory: pytest.TempPathFactory) -> orchestrator.Orchestrator:
    from orchestrator.models.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
    small = {"num_cpus": 0.25}
    return start_orchestrator(
        {
            "llm": {  # not "light": that name would build envs/light as the pool's own env
                "worker": "workers.light:Light",
                "resources": small,
                "limits": {"concurrency": 16, "call_timeout_s": 120},
                "options": {"model": str(tiny), "name": "tiny", "threads": 1, "json_max_string": 24},
            },
            "oracle": {"worker": "tests.kit.oracle:Oracle", "resources": small, "options": {"task_delay_s": 0.5}},
            "heavy": {
                "worker": "workers.heavy:Heavy",
                "env_manager": "none",  # this venv: a pool named heavy would otherwise build envs/heavy with pip
                "resources": small,
                "health": {"period_s": 0.5, "timeout_s": 10},
                "sessions": {"per_worker": 1},
                "options": {"model": "llm/tiny"},
            },
        }
    )


def stream_of(job: orchestrator.Job) -> list[dict[str, Any]]:
    return [event for _, event in job.events()]


def test_optimize_runs_on_the_offline_model_and_its_program_loads(orch: orchestrator.Orchestrator) -> None:
    import dspy

    from orchestrator.dspy import PoolLM

    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer={**BUDGET, "num_threads": 4})
    events = stream_of(job)
    result = job.result()
    stages = [e["stage"] for e in events if "stage" in e]
    assert stages == ["bootstrap", "propose", "trials"], events
    trials = [e for e in events if "trial" in e]
    assert [e["trial"] for e in trials] == list(range(len(KINDS))) and [e["kind"] for e in trials] == KINDS
    assert [e["progress"]["done"] for e in events if "progress" in e] == list(range(1, len(KINDS) + 1))
    assert events.index(next(e for e in events if "stage" in e and e["stage"] == "trials")) < events.index(trials[0])
    assert all(set(t["params"]) == {"0_predictor_instruction", "0_predictor_demos"} for t in trials)
    assert result["trials"] == len(KINDS) and 0.0 <= result["baseline"] <= result["score"] <= 1.0

    program = dspy.Predict("question -> answer")
    program.load_state(result["program"])
    with dspy.context(lm=PoolLM("llm/tiny", orch)):
        prediction = program(question="What is 2 plus 3?")
    assert isinstance(prediction.answer, str)  # the tiny model's words, parsed from its constrained JSON


def test_optimizer_returns_the_instruction_that_scores(orch: orchestrator.Orchestrator) -> None:
    import dspy

    from orchestrator.dspy import PoolLM

    with orch.session("heavy") as session:  # the README's flow: a session, optimize as a job in it, the program
        job = orch.submit(
            "heavy",
            "optimize",
            _session=session,
            program=PROGRAM,
            trainset=ROWS,
            model="oracle/oracle",
            optimizer=BUDGET,
        )
        result = job.result(timeout=300)
        assert job.status()["session"] == session.id
    assert result["baseline"] == 0.0 and result["score"] == 1.0, result
    assert "MAGIC" in result["program"]["signature"]["instructions"]
    program = dspy.Predict("question -> answer")
    program.load_state(result["program"])
    with dspy.context(lm=PoolLM("oracle/oracle", orch)):
        assert program(question="What is 20 plus 22?").answer == "42"

    scored = orch.submit(
        "heavy", "evaluate", program={**PROGRAM, "state": result["program"]}, devset=ROWS, model="oracle/oracle"
    )
    events = stream_of(scored)
    assert [e["example"] for e in events if "example" in e] == list(range(len(ROWS)))
    assert scored.result()["score"] == 1.0
    plain = orch.submit("heavy", "evaluate", program=PROGRAM, devset=ROWS[:2], model="oracle/oracle").result()
    assert plain["score"] == 0.0 and plain["results"][0]["prediction"] == {"answer": "no idea"}


def test_a_killed_search_resumes_without_repeating_work(orch: orchestrator.Orchestrator) -> None:
    args = {"program": PROGRAM, "trainset": ROWS, "model": "oracle/oracle", "optimizer": {**BUDGET, "num_threads": 1}}
    before = orch.call("oracle", "calls")
    clean = orch.submit("heavy", "optimize", **args).result(timeout=300)
    middle = orch.call("oracle", "calls")
    expected = {kind: middle[kind] - before[kind] for kind in middle}

    job = orch.submit("heavy", "optimize", **args)
    # SIGKILL mid-search: trial 2 is running
    events, pid = events_killing_once(orch, job, "heavy", lambda event: event.get("trial") == 1)
    result = job.result(timeout=300)
    after = orch.call("oracle", "calls")
    assert actors(orch, "heavy")[0]["pid"] != pid and job.status()["attempts"] == 2, job.status()

    assert [e["trial"] for e in events if "trial" in e] == list(range(len(KINDS)))  # each trial event once
    assert [e["stage"] for e in events if "stage" in e] == ["bootstrap", "propose", "trials"]
    assert after["propose"] - middle["propose"] == expected["propose"]  # the proposal stage ran once
    # Finished trials were replayed, not evaluated again: only the call of the trial in flight at the kill
    # (one, as each task call takes 0.5 s) is repeated; a finished trial would add its 2 minibatch calls.
    assert expected["task"] <= after["task"] - middle["task"] <= expected["task"] + 1
    assert {k: result[k] for k in ("score", "params", "baseline", "trials")} == {
        k: clean[k] for k in ("score", "params", "baseline", "trials")
    }  # the same search an uninterrupted run made


def test_gepa_runs_on_the_offline_model_and_its_program_loads(orch: orchestrator.Orchestrator) -> None:
    import dspy

    from orchestrator.dspy import PoolLM

    budget = {**GEPA, "max_metric_calls": 14, "num_threads": 4}
    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer=budget)
    events = stream_of(job)
    result = job.result()
    assert [e["stage"] for e in events if "stage" in e] == ["baseline", "iterations"], events
    iterations = [e for e in events if "iteration" in e]
    assert iterations and [e["iteration"] for e in iterations] == list(range(len(iterations)))
    calls = [e["metric_calls"] for e in iterations]
    assert calls == sorted(calls) and calls[0] > len(ROWS)  # the seed's valset score, then each iteration's
    assert [e["progress"]["done"] for e in events if "progress" in e] == calls
    assert result["trials"] == len(iterations) and 0.0 <= result["baseline"] <= result["score"] <= 1.0

    program = dspy.Predict("question -> answer")
    program.load_state(result["program"])
    with dspy.context(lm=PoolLM("llm/tiny", orch)):
        assert isinstance(program(question="What is 2 plus 3?").answer, str)


def test_a_killed_gepa_run_resumes_from_its_saved_state(orch: orchestrator.Orchestrator) -> None:
    import dspy

    from orchestrator.dspy import PoolLM

    budget = {**GEPA, "max_metric_calls": 24, "num_threads": 1}
    args = {"program": PROGRAM, "trainset": ROWS, "model": "oracle/oracle", "optimizer": budget}
    before = orch.call("oracle", "calls")
    clean = orch.submit("heavy", "optimize", **args).result(timeout=300)
    middle = orch.call("oracle", "calls")
    expected = {kind: middle[kind] - before[kind] for kind in middle}
    # GEPA reflected once and found the instruction the oracle answers under
    assert clean["baseline"] == 0.0 and clean["score"] == 1.0 and expected["propose"] == 1, clean
    assert "MAGIC" in clean["program"]["signature"]["instructions"]

    job = orch.submit("heavy", "optimize", **args)
    # SIGKILL mid-search: iteration 2 is running
    events, pid = events_killing_once(orch, job, "heavy", lambda event: event.get("iteration") == 1)
    result = job.result(timeout=300)
    after = orch.call("oracle", "calls")
    assert actors(orch, "heavy")[0]["pid"] != pid and job.status()["attempts"] == 2, job.status()

    assert [e["stage"] for e in events if "stage" in e] == ["baseline", "iterations"]
    assert [e["iteration"] for e in events if "iteration" in e] == list(range(clean["trials"]))  # each once
    assert after["propose"] - middle["propose"] == expected["propose"]  # the reflection was not repeated
    # GEPA resumed from its saved state: the seed's valset score (6 calls) and the finished iterations were
    # not repeated; only the iteration in flight at the kill (at most 3 calls after the first iteration) and
    # one example of the seed (GEPA scores it before loading its state) ran again.
    assert expected["task"] <= after["task"] - middle["task"] <= expected["task"] + 1 + 3
    assert {k: result[k] for k in ("score", "baseline", "trials", "program")} == {
        k: clean[k] for k in ("score", "baseline", "trials", "program")
    }
    program = dspy.Predict("question -> answer")
    program.load_state(result["program"])
    with dspy.context(lm=PoolLM("oracle/oracle", orch)):
        assert program(question="What is 20 plus 22?").answer == "42"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "bleu"}, "metric"),
        ({"metric": "no_such_module:score"}, "metric"),
        ({"program": {"signature": "question answer"}}, "program.signature"),
        ({"program": {"signature": "question -> answer", "module": "react"}}, "program.module"),
        ({"trainset": [{"question": "q"}, {"question": "r", "answer": "s"}]}, "trainset.0"),
        ({"trainset": ROWS[:1]}, "trainset"),
        ({"model": "nowhere/tiny"}, "model"),
        ({"model": "llm/huge"}, "model"),
        (
            {"prompt_model": {"model": "openai/gpt-4o-mini", "api_key_env": "NO_SUCH_KEY_VAR"}},
            "prompt_model.api_key_env",
        ),
        ({"optimizer": {"num_trials": 0}}, "optimizer.num_trials"),
        ({"optimizer": {"num_candidates": 0}}, "optimizer.num_candidates"),
        ({"optimizer": "simba"}, "optimizer"),
        ({"optimizer": {"name": "gepa", "max_metric_calls": 0}}, "optimizer.max_metric_calls"),
        ({"optimizer": {"name": "gepa", "num_candidates": 3}}, "optimizer.num_candidates"),
        ({"optimizer": {"max_metric_calls": 50}}, "optimizer.max_metric_calls"),
    ],
)
def test_bad_optimize_input_is_refused_at_submit(
    orch: orchestrator.Orchestrator, change: dict[str, Any], field: str
) -> None:
    before = len(orch.jobs("heavy"))
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("heavy", "optimize", **{"program": PROGRAM, "trainset": ROWS, **change})
    assert any(str(d.get("field", "")).startswith(field) for d in refused.value.detail or []), refused.value
    assert refused.value.pool == "heavy" and refused.value.op == "optimize"
    assert len(orch.jobs("heavy")) == before  # nothing queued
