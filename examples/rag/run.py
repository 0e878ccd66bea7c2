"""Build the corpus, optimize the RAG program on the heavy pool, then load the result here and ask it.

    orchestrator up                                   # in another terminal (pools.yaml ships code: [examples])
    python -m examples.rag.run                        # MIPROv2; --optimizer gepa for GEPA

With the default tiny random model the scores stay near 0 (it is there for the mechanics); set
LIGHT_MODEL to a real instruct model for real answers.
"""

from __future__ import annotations

import argparse
from typing import Any

import dspy

import orchestrator
from examples.rag.data import corpus, devset, trainset
from examples.rag.program import RAG
from orchestrator.dspy import PoolLM

PROGRAM = {"class": "examples.rag.program:RAG", "init": {"corpus": "pydocs", "k": 3}}
BUDGETS: dict[str, dict[str, Any]] = {
    "mipro": {"num_trials": 4, "num_candidates": 2, "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "gepa": {"name": "gepa", "max_metric_calls": 60, "reflection_minibatch_size": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", choices=sorted(BUDGETS), default="mipro")
    parser.add_argument("--model", default="light/tiny", help="the task model, a pool model")
    args = parser.parse_args()
    orch = orchestrator.connect()

    built = orch.submit("retrieval", "corpus_build", name="pydocs", docs=corpus()).result(timeout=600)
    print("corpus:", built)
    job = orch.submit(
        "heavy",
        "optimize",
        program=PROGRAM,
        trainset=trainset(),
        valset=devset(),
        metric="examples.rag.program:right_module",
        model=args.model,
        optimizer=BUDGETS[args.optimizer],
    )
    for _, event in job.events():
        print(event)
    result = job.result()
    print("score", result["score"], "baseline", result["baseline"], "code", result["program"]["digest"])

    rag = RAG(**result["program"]["init"])  # the optimized state loads into the class, here
    rag.load_state(result["program"]["state"])
    with dspy.context(lm=PoolLM(args.model), adapter=dspy.JSONAdapter()):
        question = devset()[0]["question"]
        print(question, "->", rag(question=question).answer)


if __name__ == "__main__":
    main()
