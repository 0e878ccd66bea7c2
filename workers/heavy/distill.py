"""DSPy's BootstrapFinetune as a resumable job: the program's successful traces become a LoRA adapter.

The stages are DSPy's own pieces, checkpointed between them:

1. **bootstrap**: run the program over the trainset with the teacher model (the task
   model unless one is named) and DSPy's ``bootstrap_trace_data``; keep the traces the
   metric passes, and turn each predictor call into a chat row with the adapter the
   pool decodes under (``JSONAdapter``: the messages it sends, the JSON it parses). The rows are
   the checkpoint: a re-run never calls the teacher again.
2. **finetune**: train the task model's adapter on those rows (the ``finetune`` job's
   trainer, :func:`workers.heavy.finetune.train`, its checkpoints nested in this job's),
   so a re-run resumes from the last trainer checkpoint.
3. **publish**: the pool serving the task model loads the adapter on every actor.

The returned program is the student with its demos dropped (the adapter learned
them) and bound to the fine-tuned model (``model``): every predictor shares one
adapter, like DSPy's ``multitask=True``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator
from typing import Any

from orchestrator import Context
from workers.heavy.finetune import Hyper, LoRA, train
from workers.heavy.metrics import Metric

dspy: Any = importlib.import_module("dspy")
Events = Generator[dict[str, Any], None, dict[str, Any]]


class Nested:
    """A job's context for a stage that checkpoints its own state under ``key`` of the job's checkpoint."""

    def __init__(self, ctx: Context, state: dict[str, Any], key: str) -> None:
        self._ctx, self._state, self._key = ctx, state, key

    @property
    def resume(self) -> Any:
        return self._state.get(self._key)

    def checkpoint(self, obj: Any = None) -> None:
        self._state[self._key] = obj
        self._ctx.checkpoint(self._state)

    def __getattr__(self, name: str) -> Any:  # job_dir, progress, cancelled...: the job's own
        return getattr(self._ctx, name)


def trace_rows(
    student: Any, trainset: list[Any], metric: Metric, teacher_lm: Any, threads: int
) -> tuple[list[Any], int]:
    """Chat rows, one per predictor call of each example the metric passes, as the pool's adapter formats them;
    and how many examples passed."""
    from dspy.teleprompt.bootstrap_trace import bootstrap_trace_data

    adapter = dspy.JSONAdapter()
    with dspy.context(lm=teacher_lm, adapter=adapter):
        traced = bootstrap_trace_data(
            program=student, dataset=trainset, metric=metric, num_threads=threads, raise_on_error=False
        )
    passed = [item for item in sorted(traced, key=lambda t: t["example_ind"]) if item["score"]]
    rows = [
        chat_row(adapter, predictor.signature, inputs, outputs)
        for item in passed
        for predictor, inputs, outputs in item["trace"]
    ]
    return rows, len(passed)


def chat_row(adapter: Any, signature: Any, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
    """One predictor call as a chat row, the messages the adapter sends and the answer it parses (DSPy's
    ``format_finetune_data``, which its JSONAdapter does not implement); no demos: the adapter learns them."""
    messages = adapter.format(signature=signature, demos=[], inputs=inputs)
    answer = adapter.format_assistant_message_content(signature=signature, outputs=dict(outputs))
    return {"messages": [*messages, {"role": "assistant", "content": answer}]}


def bootstrap_finetune(
    ctx: Context,
    student: Any,
    trainset: list[Any],
    metric: Metric,
    teacher_lm: Any,
    threads: int,
    tune: tuple[str, LoRA, Hyper, str],
    publish: Callable[[str], str],
) -> Events:
    """Collect ``student``'s successful traces with ``teacher_lm``, fine-tune ``tune`` = (base source, LoRA,
    hyperparameters, adapter name) on them, ``publish(adapter)`` → the served model; returns the program
    (demos dropped), the model, and what went into it."""
    state: dict[str, Any] = ctx.resume or {}
    if "rows" not in state:
        yield {"stage": "bootstrap"}
        rows, passed = trace_rows(student, trainset, metric, teacher_lm, threads)
        if not rows:
            raise ValueError(
                f"no training data: the metric passed none of the {len(trainset)} trainset examples with the teacher "
                "model (give a better teacher, or a program state that scores)"
            )
        state = {"rows": rows, "traces": {"passed": passed, "examples": len(trainset), "rows": len(rows)}}
        yield {"stage": "finetune", **state["traces"]}
        ctx.checkpoint(state)  # stored with the events before it: a re-run yields neither again
    source, lora, hyper, name = tune
    trained = yield from train(Nested(ctx, state, "trainer"), source, state["rows"], None, lora, hyper, name)  # type: ignore[arg-type]
    if ctx.cancelled or trained.get("cancelled"):
        return {"program": student, "model": None, "adapter": None, "cancelled": True, **state["traces"]}
    model = publish(name)
    for predictor in student.predictors():
        predictor.demos = []
    return {
        "program": student,
        "model": model,
        "adapter": trained["adapter"],
        "steps": trained["steps"],
        "metrics": trained["metrics"],
        "traces": state["traces"],
    }
