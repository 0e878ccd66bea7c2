"""The shipped RAG example (examples/rag), as the README runs it: the corpus built from the standard library's
docstrings, the program optimized by class from the code pools.yaml ships (``code: [examples]``), the result
loaded into the class here and asked a question. The oracle model stands in for the light pool's."""

from __future__ import annotations

from typing import Any

import pytest

import orchestrator
from tests.conftest import ROOT, Start, heavy_pool, retrieval_pool

pytest.importorskip("dspy", reason="the heavy pool needs dspy: pip install -e '.[heavy]'")
pytest.importorskip("sentence_transformers", reason="the retrieval extra is not installed")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    small = {"num_cpus": 0.25}
    return start_orchestrator(
        {
            "oracle": {"worker": "tests.kit.oracle:Oracle", "resources": small},
            "retrieval": retrieval_pool(),
            "heavy": heavy_pool(),
        },
        base_dir=ROOT,
        code=["examples"],
    )


def test_the_rag_example_builds_its_corpus_optimizes_and_answers(orch: orchestrator.Orchestrator) -> None:
    import dspy

    from examples.rag.data import corpus, devset, trainset
    from examples.rag.program import RAG
    from orchestrator.dspy import PoolLM

    docs = corpus()
    built = orch.submit("retrieval", "corpus_build", name="pydocs", docs=docs).result(timeout=300)
    assert built["documents"] == len(docs)
    hits = orch.call("retrieval", "search", corpus="pydocs", query="Which module reads and writes tar archives?", k=3)
    assert "tarfile" in hits["ids"]  # real MiniLM embeddings find the right docstring

    program = {"class": "examples.rag.program:RAG", "init": {"corpus": "pydocs", "k": 2}}
    budget = {"num_trials": 2, "num_candidates": 2, "max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    args: dict[str, Any] = {"trainset": trainset()[:4], "valset": devset()[:3], "optimizer": budget}
    job = orch.submit("heavy", "optimize", program=program, metric="examples.rag.program:right_module", **args)
    trials = [event for _, event in job.events() if "trial" in event]
    result = job.result(timeout=300)
    assert trials and all(set(t["choices"]) == {"answer.predict", "check"} for t in trials), trials
    tarfile_doc = next(doc["text"] for doc in docs if doc["id"] == "tarfile")
    assert orch.call("oracle", "saw", text=tarfile_doc) > 0  # retrieved passages reached the program's LM

    state = result["program"]
    assert state["class"] == program["class"] and set(state["state"]) == {"answer.predict", "check"}
    rag = RAG(**state["init"])
    rag.load_state(state["state"])
    with dspy.context(lm=PoolLM("oracle/oracle"), adapter=dspy.JSONAdapter()):
        assert rag(question=devset()[0]["question"]).answer == "no idea"  # the oracle's answer off its MAGIC
