"""The metric an ``optimize`` or ``evaluate`` job scores with: a built-in comparison or an importable function.

Built-ins compare the prediction with the example's labels: the signature's
output fields for a signature program, and for a program by class the row's
keys that are not ``forward`` inputs (DSPy's ``Example.labels()``).
"""

from __future__ import annotations

import importlib
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

from workers.heavy.programs import invalid

Metric = Callable[..., float]
METRIC_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


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


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of the built-in comparisons (which need labels in every row)."""
    return name in COMPARE


def metric(name: str, outputs: list[str] | None) -> Metric:
    """``exact_match``, ``contains`` or ``f1`` over ``outputs`` (averaged; None: each example's labels), or an
    importable ``"module:function"`` taking ``(example, prediction, trace=None)``."""
    if name in COMPARE:
        compare = COMPARE[name]

        def builtin(example: Any, prediction: Any, trace: Any = None, *args: Any, **kwargs: Any) -> float:
            fields = outputs if outputs is not None else list(example.labels().keys())
            scores = [compare(example.get(f, ""), getattr(prediction, f, "") or "") for f in fields]
            return sum(scores) / len(scores) if scores else 0.0

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
