"""A deterministic chat model for the heavy pool's tests: it answers "What is A plus B?" right only when
its instructions say MAGIC, and its proposals are MAGIC instructions.

Served like a light pool (``chat`` and ``models`` ops, structured outputs by
filling the response schema's fields), it makes an optimization run's outcome
known in advance, and it counts the calls it gets by kind (``propose``: any
schema without one of ``task_fields`` (``answer``), or free text such as GEPA's
reflection, answered with the MAGIC instruction in a fenced block; ``task``: the
program's own calls, each of its fields empty but ``answer``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from orchestrator import Worker, op

QUESTION = re.compile(r"What is (\d+) plus (\d+)\?")
MAGIC = "Reply with the MAGIC sum, in digits."  # no "Word:" start: DSPy strips such prefixes


class Oracle(Worker):
    """See the module docstring; ``task_delay_s`` slows each task call (a kill then lands between calls);
    ``task_fields``: the output fields that mark a program's own call (a multi-predictor program's)."""

    def __init__(self, task_delay_s: float = 0.0, task_fields: list[str] | None = None) -> None:
        self.task_delay_s = task_delay_s
        self.task_fields = set(task_fields or ["answer"])
        self.counts = {"propose": 0, "task": 0}
        self.prompts: list[str] = []  # every task call's messages, as text
        self.lock = threading.Lock()

    @op
    def models(self) -> list[dict[str, Any]]:
        """One model, ``oracle``."""
        return [{"id": "oracle", "kind": "base"}]

    @op
    def calls(self) -> dict[str, int]:
        """Chat calls served so far, by kind."""
        with self.lock:
            return dict(self.counts)

    @op
    def saw(self, text: str) -> int:
        """How many task calls had ``text`` in their messages (a retrieved passage reached the program's LM)."""
        with self.lock:
            return sum(text in prompt for prompt in self.prompts)

    @op
    def chat(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> Any:
        """Answer with JSON holding the schema's fields (sampling arguments are ignored)."""
        fields = list(((response_format or {}).get("json_schema") or {}).get("schema", {}).get("properties", {}))
        kind = "task" if self.task_fields & set(fields) else "propose"
        with self.lock:
            self.counts[kind] += 1
            if kind == "task":
                self.prompts.append(" ".join(str(m.get("content")) for m in messages))
        if kind == "task":
            time.sleep(self.task_delay_s)
            system = " ".join(str(m.get("content")) for m in messages if m.get("role") == "system")
            found = QUESTION.findall(str(messages[-1].get("content")))
            right = str(int(found[-1][0]) + int(found[-1][1])) if found else "?"
            answer = {f: "" for f in fields}
            if "answer" in fields:
                answer["answer"] = right if "MAGIC" in system else "no idea"
            text = json.dumps(answer)
        elif response_format is None:  # free text: GEPA's reflection reads the instruction from a fenced block
            text = f"```\n{MAGIC}\n```"
        else:
            text = json.dumps({f: MAGIC for f in fields})
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return {
            "model": "oracle/oracle",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": usage,
        }
