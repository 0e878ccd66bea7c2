"""A user's ``dspy.Module`` for the heavy pool's tests, importable from the ``tests`` package (which the pools'
actors can import): drafts, then answers under the oracle's MAGIC instruction, so the oracle answers it right."""

from __future__ import annotations

from typing import Any

import dspy

from tests.kit.oracle import MAGIC


class Solve(dspy.Module):
    """Two predictors: ``draft`` (question -> draft), then ``respond`` (question, draft -> answer) told MAGIC."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.respond = dspy.Predict(dspy.Signature("question, draft -> answer", MAGIC))

    def forward(self, question: str) -> Any:
        draft = self.draft(question=question).draft
        return self.respond(question=question, draft=draft)
