"""The RAG program: retrieve from the retrieval pool's corpus, answer with ``ChainOfThought``, then check.

The heavy pool imports this class by name (``"examples.rag.program:RAG"``) from the copy pools.yaml's
``code: [examples]`` ships; its two predictors are optimized by name (``answer.predict``, ``check``).
"""

from __future__ import annotations

from typing import Any

import dspy

from orchestrator.dspy import PoolRetriever


class RAG(dspy.Module):
    """Retrieve ``k`` passages of ``corpus``, draft an answer with reasoning, then a second predictor checks the
    draft against the passages and gives the final, short answer."""

    def __init__(self, corpus: str = "pydocs", k: int = 3, pool: str = "retrieval") -> None:
        super().__init__()
        self.retrieve = PoolRetriever(corpus, k=k, pool=pool)  # this process's orchestrator handle, at each call
        self.answer = dspy.ChainOfThought("context: list[str], question -> answer")
        self.check = dspy.Predict("context: list[str], question, draft -> answer")

    def forward(self, question: str) -> Any:
        context = self.retrieve(question).passages
        draft = self.answer(context=context, question=question).answer
        return self.check(context=context, question=question, draft=draft)


def right_module(example: Any, prediction: Any, trace: Any = None) -> float:
    """1.0 when the answer names the expected module (``metric="examples.rag.program:right_module"``)."""
    words = str(getattr(prediction, "answer", "")).lower().replace("`", " ").replace(".", " ").split()
    return float(str(example.answer).lower() in words)
