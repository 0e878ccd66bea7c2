"""Structured outputs: OpenAI's ``response_format`` as a grammar every generated token must follow.

``parse_response_format`` checks a request's ``response_format`` (``text``,
``json_object`` or ``json_schema``) and returns the JSON schema to follow;
a schema the decoder cannot honour is a 422 naming ``response_format``.

On the transformers backend ``GrammarMask`` (a logits processor, before the
sampler) keeps one llguidance matcher per constrained row and masks every
token the schema does not allow at that point, so each row's text is valid
JSON when it ends on EOS (a row cut by ``max_tokens`` ends with
``finish_reason: length``, as OpenAI's does). vLLM uses its own structured outputs.

``max_string`` bounds every JSON string value the schema leaves unbounded: a
weak or random model (the offline tiny one) otherwise writes a string until
``max_tokens`` and its JSON never closes. (JSON mode's free-form keys stay
unbounded: llguidance has no ``propertyNames``.)
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any

from orchestrator.errors import InvalidArguments

FIELD = "response_format"
ANY_OBJECT: dict[str, Any] = {"type": "object"}
COMPACT = {"whitespace_flexible": False}  # no free whitespace between tokens: shorter, and every model can end it


def _llguidance() -> Any:
    return importlib.import_module("llguidance")


def _invalid(field: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


def parse_response_format(response_format: Any, max_string: int | None = None) -> dict[str, Any] | None:
    """The JSON schema a request's output must follow, or None for free text.

    Accepts OpenAI's shapes: ``{"type": "text"}``, ``{"type": "json_object"}``
    and ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``.
    The schema is compiled here, so a bad one fails the request before any work.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        got = type(response_format).__name__
        raise _invalid(FIELD, f"expected an object such as {{'type': 'json_object'}}, got {got}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = ANY_OBJECT if max_string is None else bounded_object(max_string)
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _invalid(f"{FIELD}.json_schema", "required: an object with a 'schema'")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise _invalid(f"{FIELD}.json_schema.schema", f"must be a JSON schema object, got {type(schema).__name__}")
    else:
        raise _invalid(f"{FIELD}.type", f"must be one of text, json_object, json_schema; got {kind!r}")
    if max_string is not None:
        schema = cap_strings(schema, max_string)
    grammar(json.dumps(schema, sort_keys=True))  # compiled and cached: errors surface now
    return dict(schema)


def bounded_object(limit: int) -> dict[str, Any]:
    """JSON mode for a model whose strings are capped (the offline tiny model): any object, but bounded as a
    capped schema is, so it always closes: at most 4 keys (identifiers of up to 16 characters), each a
    string of up to ``limit`` characters, an integer, a boolean or null."""
    value = {
        "anyOf": [
            {"type": "string", "maxLength": limit},
            {"type": "integer", "minimum": -(10**6), "maximum": 10**6},
            {"type": "boolean"},
            {"type": "null"},
        ]
    }
    key = "^[A-Za-z_][A-Za-z0-9_]{0,15}$"
    return {"type": "object", "maxProperties": 4, "patternProperties": {key: value}, "additionalProperties": False}


def cap_strings(schema: Any, limit: int) -> Any:
    """``schema`` with ``maxLength: limit`` on every string type that has no length, pattern, enum or format."""
    if isinstance(schema, list):
        return [cap_strings(item, limit) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: cap_strings(value, limit) for key, value in schema.items()}
    kinds = out.get("type")
    is_string = kinds == "string" or (isinstance(kinds, list) and "string" in kinds)
    if is_string and not {"maxLength", "pattern", "enum", "const", "format"} & out.keys():
        out["maxLength"] = limit
    return out


@functools.lru_cache(maxsize=256)
def grammar(schema_json: str) -> str:
    """The llguidance grammar of a JSON schema (text), checked; 422 naming ``response_format`` if it cannot be."""
    ll = _llguidance()
    try:
        compiled = str(ll.LLMatcher.grammar_from_json_schema(schema_json, defaults=COMPACT))
    except ValueError as exc:
        raise _invalid(f"{FIELD}.json_schema.schema", f"not a JSON schema: {exc}") from None
    problem = ll.LLMatcher.validate_grammar(compiled)
    if problem:
        raise _invalid(f"{FIELD}.json_schema.schema", f"cannot be followed: {problem}")
    return compiled


class Grammars:
    """One model's llguidance tokenizer (built on first use) and matchers for its rows."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos: set[int]) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self.eos = sorted(eos)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The llguidance view of the model's tokenizer (about a second for a large vocabulary, so cached)."""
        if self._tokenizer is None:
            hf = importlib.import_module("llguidance.hf")
            self._tokenizer = hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos)
        return self._tokenizer

    def matcher(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher at the start of ``schema``."""
        return _llguidance().LLMatcher(self.tokenizer, grammar(json.dumps(schema, sort_keys=True)), log_level=0)


class GrammarMask:
    """Logits processor: each constrained row may only take tokens its schema allows next.

    At each step it first feeds every live matcher the token its row took last
    step, then masks the row's scores. A row whose matcher has ended (EOS was
    its only choice) or failed is left alone: the stopping criterion ends it.
    """

    def __init__(self, schemas: list[dict[str, Any] | None], grammars: Grammars) -> None:
        lt = importlib.import_module("llguidance.torch")
        self.lt = lt
        self.matchers = {i: grammars.matcher(s) for i, s in enumerate(schemas) if s is not None}
        self.bitmask = lt.allocate_token_bitmask(len(schemas), grammars.vocab_size)
        self.first = True

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if not self.first:
            last = input_ids[:, -1].tolist()
            for i, matcher in list(self.matchers.items()):
                if matcher.is_stopped() or not matcher.consume_token(last[i]):
                    del self.matchers[i]  # ended (its EOS) or broken: nothing left to constrain
        self.first = False
        for i, matcher in self.matchers.items():
            self.lt.fill_next_token_bitmask(matcher, self.bitmask, i)
            row = scores[i : i + 1]
            self.lt.apply_token_bitmask_inplace(row, self.bitmask[i : i + 1].to(row.device))
        return scores
