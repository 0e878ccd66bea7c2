"""What an ``optimize`` or ``evaluate`` job is about: the program, its data, its metric, its models.

Each is a pydantic model or a function that refuses bad input with an
InvalidArguments naming the field (``program.signature``, ``trainset.3``,
``metric``, ``model``...), so a job is refused at submit, before any work.
"""

from __future__ import annotations

import importlib
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.errors import InvalidArguments

dspy: Any = importlib.import_module("dspy")

Metric = Callable[..., float]
METRIC_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class Program(BaseModel):
    """The program to optimize: a signature and a module, or a state a previous run returned."""

    model_config = ConfigDict(extra="forbid")
    signature: str = Field(description='DSPy signature, e.g. "question -> answer" or "context, question -> answer".')
    module: Literal["predict", "chain_of_thought"] = "predict"
    instructions: str | None = Field(None, description="The starting instructions (default: DSPy's).")
    state: dict[str, Any] | None = Field(None, description="A program state (dump_state) to start from.")


OptimizerName = Literal["mipro", "gepa"]


class Budget(BaseModel):
    """Which optimizer, and how much it may spend."""

    model_config = ConfigDict(extra="forbid")
    name: OptimizerName = "mipro"
    auto: Literal["light", "medium", "heavy"] | None = Field(None, description="DSPy's presets (sets the counts).")
    num_trials: int = Field(
        8, ge=1, le=1000, description="MIPROv2: search trials; GEPA: full evaluations of the data (with auto unset)."
    )
    num_candidates: int = Field(3, ge=1, le=50, description="Instruction and demo-set candidates (with auto unset).")
    max_bootstrapped_demos: int = Field(2, ge=0, le=16)
    max_labeled_demos: int = Field(2, ge=0, le=16)
    minibatch_size: int = Field(25, ge=1, le=1000)
    minibatch_full_eval_steps: int = Field(5, ge=1, le=100)
    seed: int = 9
    num_threads: int = Field(8, ge=1, le=64, description="Concurrent evaluation calls.")
    # GEPA only
    max_metric_calls: int | None = Field(None, ge=1, description="GEPA: its budget in metric calls.")
    reflection_minibatch_size: int = Field(3, ge=1, le=100, description="GEPA: examples per reflection.")
    use_merge: bool = Field(True, description="GEPA: also merge candidates from the Pareto front.")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # "gepa" is short for {"name": "gepa"}


ONLY = {
    "mipro": {"num_candidates", "max_bootstrapped_demos", "max_labeled_demos", "minibatch_size"}
    | {"minibatch_full_eval_steps"},
    "gepa": {"max_metric_calls", "reflection_minibatch_size", "use_merge"},
}


def budget(value: Budget | None) -> Budget:
    """The optimizer's settings; a setting that belongs to the other optimizer is refused, naming it,
    rather than silently ignored."""
    chosen = value or Budget()
    for other, fields in ONLY.items():
        wrong = sorted(fields & chosen.model_fields_set) if other != chosen.name else []
        if wrong:
            raise invalid(f"optimizer.{wrong[0]}", f"applies to {other} only (this run uses {chosen.name})")
    return chosen


class Endpoint(BaseModel):
    """An external OpenAI-compatible model; the key is read from ``api_key_env`` in the heavy pool."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A LiteLLM model name, e.g. openai/gpt-4o-mini.")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="The environment variable holding the key (not the key).")


ModelSpec = str | Endpoint


def invalid(field: str, message: str) -> InvalidArguments:
    """An invalid_arguments error naming ``field``."""
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


def signature_of(program: Program) -> Any:
    """The program's dspy Signature; a 422 naming ``program.signature`` if it does not parse."""
    try:
        signature = dspy.Signature(program.signature)
    except Exception as exc:
        raise invalid("program.signature", f"not a DSPy signature: {exc}") from None
    if not signature.input_fields or not signature.output_fields:
        raise invalid("program.signature", "needs input and output fields, e.g. 'question -> answer'")
    if program.instructions:
        signature = signature.with_instructions(program.instructions)
    return signature


def build(program: Program) -> Any:
    """A fresh dspy module for ``program`` (its saved state loaded, if given)."""
    signature = signature_of(program)
    module = dspy.Predict(signature) if program.module == "predict" else dspy.ChainOfThought(signature)
    if program.state:
        try:
            module.load_state(program.state)
        except Exception as exc:
            raise invalid("program.state", f"does not load into a {program.module} module: {exc}") from None
    return module


def examples(rows: list[dict[str, Any]], signature: Any, field: str) -> list[Any]:
    """Rows as dspy Examples with the signature's inputs; every row needs every input and output field."""
    needed = [*signature.input_fields, *signature.output_fields]
    out = []
    for i, row in enumerate(rows):
        missing = [name for name in needed if name not in row]
        if missing:
            raise invalid(f"{field}.{i}", f"missing {', '.join(missing)} (the signature's fields: {', '.join(needed)})")
        out.append(dspy.Example(**row).with_inputs(*signature.input_fields))
    return out


# ------------------------------------------------------------------ metrics
def _normalize(text: Any) -> str:
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def _f1(expected: Any, predicted: Any) -> float:
    gold, pred = _normalize(expected).split(), _normalize(predicted).split()
    common = sum((Counter(gold) & Counter(pred)).values())
    if not gold or not pred or not common:
        return float(gold == pred)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


COMPARE: dict[str, Callable[[Any, Any], float]] = {
    "exact_match": lambda e, p: float(_normalize(e) == _normalize(p)),
    "contains": lambda e, p: float(_normalize(e) in _normalize(p)),
    "f1": _f1,
}


def metric(name: str, signature: Any) -> Metric:
    """``exact_match``, ``contains`` or ``f1`` over the signature's output fields (averaged), or an
    importable ``"module:function"`` taking ``(example, prediction, trace=None)``."""
    if name in COMPARE:
        compare, outputs = COMPARE[name], list(signature.output_fields)

        def builtin(example: Any, prediction: Any, trace: Any = None, *args: Any, **kwargs: Any) -> float:
            scores = [compare(example.get(f, ""), getattr(prediction, f, "") or "") for f in outputs]
            return sum(scores) / len(scores)

        builtin.__name__ = name
        return builtin
    if not METRIC_PATH.fullmatch(name):
        known = ", ".join(COMPARE)
        raise invalid("metric", f"unknown metric {name!r}: use one of {known}, or 'module:function'")
    module, _, function = name.partition(":")
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise invalid("metric", f"cannot import {name!r} in the heavy pool: {exc}") from None
    if not callable(found):
        raise invalid("metric", f"{name!r} is not callable")
    return found
