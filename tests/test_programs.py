"""The heavy pool optimizes the user's own ``dspy.Module`` by class: a package written to a temp folder and
named in the test's ``code:`` (so only the copy shipped to the actors can import it), a ``PoolRetriever`` on a
retrieval-pool corpus and two predictors, MIPROv2 and GEPA over the oracle model, a SIGKILL mid-search, and
every refusal at submit."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import errors
from orchestrator.config import parse_config
from tests.conftest import ROOT, Start, actors, events_killing_once, heavy_pool, retrieval_pool

pytest.importorskip("dspy", reason="the heavy pool needs dspy: pip install -e '.[heavy]'")
pytest.importorskip("optuna", reason="the heavy pool needs optuna: pip install -e '.[heavy]'")

ROWS = json.loads((ROOT / "examples" / "arith.json").read_text())[:6]
PROGRAM = {"class": "myprog.steps:TwoStep", "init": {"style": "terse"}}
BUDGET = {
    "num_trials": 4,
    "num_candidates": 2,
    "max_bootstrapped_demos": 0,
    "max_labeled_demos": 0,
    "minibatch_size": 2,
    "minibatch_full_eval_steps": 2,
}
KINDS = ["minibatch", "minibatch", "full", "minibatch", "minibatch", "full"]

PACKAGE = {
    "__init__.py": "",
    "steps.py": '''
        import dspy

        from orchestrator.dspy import PoolRetriever


        class TwoStep(dspy.Module):
            """Retrieves through the retrieval pool, drafts, then answers from the question and the draft:
            two predictors."""

            def __init__(self, style: str = "plain"):
                super().__init__()
                self.style = style
                self.retrieve = PoolRetriever("facts", k=1)  # no handle: the process's own, at each call
                self.draft = dspy.Predict("context: list[str], question -> draft")
                self.respond = dspy.Predict("question, draft -> answer")

            def forward(self, question: str):
                context = self.retrieve(question).passages
                draft = self.draft(context=context, question=question).draft
                return self.respond(question=question, draft=f"{self.style}: {draft}")


        class Bare(dspy.Module):
            def forward(self, question: str):
                return dspy.Prediction(answer=question)


        class NotAModule:
            def forward(self, question: str):
                return question


        class Picky(dspy.Module):
            def __init__(self, k: int):
                super().__init__()
                if k < 1:
                    raise ValueError("k must be positive")
                self.respond = dspy.Predict("question -> answer")

            def forward(self, question: str):
                return self.respond(question=question)
    ''',
    "broken.py": "import no_such_dependency_anywhere  # noqa\n",
}


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pools.yaml's folder, holding the user's package ``myprog`` (nowhere on the driver's path)."""
    folder = tmp_path_factory.mktemp("deployed")
    (folder / "myprog").mkdir()
    for name, text in PACKAGE.items():
        (folder / "myprog" / name).write_text(textwrap.dedent(text))
    return folder


FACT = "FACT: the sum of two numbers is what adding them gives."  # the corpus's passage on sums


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, code_dir: Path) -> orchestrator.Orchestrator:
    small = {"num_cpus": 0.25}
    oracle = {"task_delay_s": 0.3, "task_fields": ["answer", "draft"]}
    started = start_orchestrator(
        {
            "oracle": {"worker": "tests.kit.oracle:Oracle", "resources": small, "options": oracle},
            "retrieval": retrieval_pool(),
            "heavy": heavy_pool(health={"period_s": 0.5, "timeout_s": 10}),
        },
        base_dir=code_dir,
        code=["myprog"],
    )
    docs = [{"id": "sum", "text": FACT}, {"id": "rain", "text": "Heavy rain is expected over the weekend."}]
    started.submit("retrieval", "corpus_build", name="facts", docs=docs).result(timeout=120)
    return started


@pytest.fixture
def importable(code_dir: Path) -> Iterator[None]:
    """The user's package on this process's path too (to load a result into the class here)."""
    sys.path.insert(0, str(code_dir))
    try:
        yield
    finally:
        sys.path.remove(str(code_dir))
        for name in [m for m in sys.modules if m == "myprog" or m.startswith("myprog.")]:
            del sys.modules[name]


def stream_of(job: orchestrator.Job) -> list[dict[str, Any]]:
    return [event for _, event in job.events()]


def test_only_the_shipped_copy_can_import_the_users_package() -> None:
    with pytest.raises(ImportError):
        importlib.import_module("myprog")


def test_mipro_optimizes_each_predictor_and_finds_the_second_ones_instruction(
    orch: orchestrator.Orchestrator, importable: None
) -> None:
    import dspy

    from orchestrator.dspy import PoolLM

    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer=BUDGET)
    events = stream_of(job)
    result = job.result(timeout=300)
    trials = [e for e in events if "trial" in e]
    assert [e["kind"] for e in trials] == KINDS
    for trial in trials:  # each predictor's choice, by its name
        assert set(trial["choices"]) == {"draft", "respond"}, trial
        assert set(trial["choices"]["respond"]) == {"instruction", "demos"}
    # The oracle answers right only under its MAGIC instruction, which matters on the second predictor alone.
    assert result["baseline"] == 0.0 and result["score"] == 1.0, result
    assert result["choices"]["respond"]["instruction"] > 0
    assert orch.call("oracle", "saw", text=FACT) > 0  # the passages reached the LM, from inside the heavy pool
    program = result["program"]
    assert set(program) == {"class", "init", "state", "digest"} and program["class"] == PROGRAM["class"]
    assert program["init"] == {"style": "terse"} and program["digest"].startswith("sha256:")
    assert "MAGIC" in program["state"]["respond"]["signature"]["instructions"]

    steps = importlib.import_module("myprog.steps")  # the result loads into the user's class and runs
    loaded = steps.TwoStep(**program["init"])
    loaded.load_state(program["state"])
    lm = PoolLM("oracle/oracle")  # like the retriever, this driver's handle (start()'s)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert loaded(question="What is 20 plus 22?").answer == "42"
    assert FACT in str(lm.history[0]["messages"])  # retrieved here too, through the pool

    scored = orch.submit("heavy", "evaluate", program=program, devset=ROWS[:3]).result(timeout=120)
    assert scored["score"] == 1.0  # evaluate takes the class program (the result as it came back) too
    plain = orch.submit("heavy", "evaluate", program=PROGRAM, devset=ROWS[:2]).result(timeout=120)
    assert plain["score"] == 0.0 and plain["results"][0]["prediction"]["answer"] == "no idea"


def test_gepa_evolves_the_predictors_by_name(orch: orchestrator.Orchestrator) -> None:
    budget = {"name": "gepa", "reflection_minibatch_size": 2, "use_merge": False, "max_metric_calls": 40}
    job = orch.submit("heavy", "optimize", program=PROGRAM, trainset=ROWS, optimizer=budget)
    events = stream_of(job)
    result = job.result(timeout=300)
    iterations = [e for e in events if "iteration" in e]
    updated = [name for e in iterations for name in e["updated"]]
    assert set(updated) <= {"draft", "respond"} and "respond" in updated, iterations
    assert result["baseline"] == 0.0 and result["score"] == 1.0, result
    assert "MAGIC" in result["program"]["state"]["respond"]["signature"]["instructions"]
    assert result["program"]["class"] == PROGRAM["class"]


def test_a_killed_multi_predictor_search_resumes_without_repeating_work(orch: orchestrator.Orchestrator) -> None:
    args = {"program": PROGRAM, "trainset": ROWS, "optimizer": {**BUDGET, "num_threads": 1}}
    before = orch.call("oracle", "calls")
    clean = orch.submit("heavy", "optimize", **args).result(timeout=300)
    middle = orch.call("oracle", "calls")
    expected = {kind: middle[kind] - before[kind] for kind in middle}

    job = orch.submit("heavy", "optimize", **args)
    events, pid = events_killing_once(orch, job, "heavy", lambda event: event.get("trial") == 1)
    result = job.result(timeout=300)
    after = orch.call("oracle", "calls")
    assert actors(orch, "heavy")[0]["pid"] != pid and job.status()["attempts"] == 2, job.status()
    assert [e["trial"] for e in events if "trial" in e] == list(range(len(KINDS)))  # each trial event once
    assert [e["stage"] for e in events if "stage" in e] == ["bootstrap", "propose", "trials"]
    assert after["propose"] - middle["propose"] == expected["propose"]  # the proposal stage ran once
    # Only the example in flight at the kill runs again (two calls: the draft and the answer).
    assert expected["task"] <= after["task"] - middle["task"] <= expected["task"] + 2
    assert {k: result[k] for k in ("score", "params", "baseline", "program")} == {
        k: clean[k] for k in ("score", "params", "baseline", "program")
    }


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"program": {"class": "myprog.broken:Thing"}}, "program.class", "no_such_dependency_anywhere"),
        ({"program": {"class": "myprog.steps:Missing"}}, "program.class", "has no 'Missing'"),
        ({"program": {"class": "os.path:join"}}, "program.class", "not deployed code"),
        ({"program": {"class": "myprog.steps:NotAModule"}}, "program.class", "not a dspy.Module"),
        ({"program": {"class": "myprog.steps:Bare"}}, "program.class", "no predictors"),
        ({"program": {"class": "myprog/steps.py"}}, "program.class", "expected 'package.module:ClassName'"),
        ({"program": {**PROGRAM, "init": {"colour": "red"}}}, "program.init.colour", "unexpected"),
        ({"program": {"class": "myprog.steps:Picky"}}, "program.init", "missing"),
        ({"program": {"class": "myprog.steps:Picky", "init": {"k": 0}}}, "program.init", "k must be positive"),
        ({"program": {**PROGRAM, "state": {"respond": {}, "reply": {}}}}, "program.state.reply", "no predictor"),
        ({"program": {**PROGRAM, "state": {"respond": {}}}}, "program.state.draft", "missing"),
        ({"program": {**PROGRAM, "signature": "question -> answer"}}, "program", "signature"),
        ({"program": {**PROGRAM, "module": "predict"}}, "program", "module"),
        ({"trainset": [*ROWS[:3], {"answer": "4"}]}, "trainset.3.question", "forward's input"),
        ({"trainset": [*ROWS[:3], {"question": "What is 1 plus 1?"}]}, "trainset.3", "no label"),
    ],
)
def test_bad_class_programs_are_refused_at_submit(
    orch: orchestrator.Orchestrator, change: dict[str, Any], field: str, says: str
) -> None:
    before = len(orch.jobs("heavy"))
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("heavy", "optimize", **{"program": PROGRAM, "trainset": ROWS, **change})
    fields = [str(d.get("field", "")) for d in refused.value.detail or []]
    assert fields and fields[0] == field, refused.value
    assert says in refused.value.message, refused.value
    assert refused.value.pool == "heavy" and refused.value.op == "optimize"
    assert len(orch.jobs("heavy")) == before  # nothing queued


def test_a_code_package_that_is_not_there_stops_start(tmp_path: Path) -> None:
    config = parse_config({"code": ["nowhere_pkg"], "pools": {}}, base_dir=tmp_path)
    with pytest.raises(errors.InvalidConfig, match=r"code\.0: no package 'nowhere_pkg'"):
        orchestrator.start(config)
    with pytest.raises(errors.InvalidConfig, match=r"code"):
        parse_config({"code": ["my/app"], "pools": {}}, base_dir=tmp_path)
