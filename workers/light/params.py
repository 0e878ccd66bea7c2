"""What a generation request asks for, in pure Python (no torch): messages, sampling, stop strings.

Both backends share these, so the parameter rules live in one place and are
unit-tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import InvalidArguments


class Message(BaseModel):
    """One chat message (OpenAI's shape; extra fields such as ``name`` are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as plain text (OpenAI content parts of type ``text`` are joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


Messages = Annotated[list[Message], Field(min_length=1, description="The conversation; at least one message.")]
MaxTokens = Annotated[Annotated[int, Field(ge=1)] | None, Field(description="Tokens to generate at most.")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Stop = Annotated[str | list[str] | None, Field(description="Up to 4 strings; text stops before the first one.")]
N = Annotated[int, Field(ge=1, le=16, description="Choices per prompt.")]


@dataclass
class Row:
    """One sequence to generate: a prompt's tokens and its sampling parameters."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    schema: dict[str, Any] | None = None  # structured outputs: the JSON schema the text must follow


def normalize_stop(stop: str | list[str] | None) -> list[str]:
    """OpenAI's ``stop`` (a string, a list, or null) as a list of non-empty strings; at most 4."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > 4:
        raise InvalidArguments("stop: at most 4 stop sequences", detail=[{"field": "stop", "message": "at most 4"}])
    return [s for s in items if s]


def resolve_max_tokens(max_tokens: int | None, prompt_tokens: int, context: int, default: int) -> int:
    """The tokens to generate; a request that cannot fit the model's context is a 422 naming ``max_tokens``."""
    if prompt_tokens >= context:
        message = f"the prompt has {prompt_tokens} tokens; this model's context is {context} tokens"
        raise InvalidArguments(message, detail=[{"field": "messages", "message": message}])
    if max_tokens is None:
        return min(default, context - prompt_tokens)
    if prompt_tokens + max_tokens > context:
        message = (
            f"this model's maximum context length is {context} tokens; you requested {prompt_tokens + max_tokens} "
            f"({prompt_tokens} in the prompt, {max_tokens} in the completion)"
        )
        raise InvalidArguments(message, detail=[{"field": "max_tokens", "message": message}])
    return max_tokens


def check_sampling(max_tokens: int | None, temperature: float, top_p: float, n: int) -> None:
    """The ranges the op signatures declare, enforced here too.

    The orchestrator builds op argument models from ``get_type_hints`` without
    ``include_extras``, which drops ``Annotated`` constraints, so they are checked again.
    """
    problems = []
    if max_tokens is not None and max_tokens < 1:
        problems.append(("max_tokens", f"must be >= 1, got {max_tokens}"))
    if not 0 <= temperature <= 2:
        problems.append(("temperature", f"must be between 0 and 2, got {temperature}"))
    if not 0 < top_p <= 1:
        problems.append(("top_p", f"must be in (0, 1], got {top_p}"))
    if not 1 <= n <= 16:
        problems.append(("n", f"must be between 1 and 16, got {n}"))
    if problems:
        text = "; ".join(f"{f}: {m}" for f, m in problems)
        raise InvalidArguments(text, detail=[{"field": f, "message": m} for f, m in problems])


def check_messages(messages: list[Any]) -> None:
    """A chat needs at least one message."""
    if not messages:
        raise InvalidArguments(
            "messages: at least one message is required", detail=[{"field": "messages", "message": "empty"}]
        )


def row_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice ``choice`` of a request: distinct choices, reproducible as a whole."""
    return None if seed is None else seed + choice


class TextAccumulator:
    """Turns one row's tokens into text deltas that never show a stop string or half a character.

    Tokens are detokenized incrementally, as vLLM and TGI do: a token's text is
    ``decode(tokens[prefix:])`` minus ``decode(tokens[prefix:read])``, where
    ``tokens[prefix:read]`` is the chunk shown last (context for tokenizers that
    drop a leading space at the start of a decode), so a token costs O(1)
    however long the row is. A chunk that ends in U+FFFD (half a UTF-8
    character) waits for the next token.

    Streaming and non-streaming texts are equal: a row with stop strings takes
    the same steps either way, and without them the deltas add up to
    ``decode(tokens)`` (``finish`` releases the rest of it), which is what a
    ``lazy`` row (no deltas wanted before the end) decodes once at the end. That
    holds for tokenizers whose decode joins at whole characters (byte-level BPE,
    SentencePiece); one that re-spells earlier text keeps what was shown and
    adds only what is new.

    A stop string ends the text just before it; the last ``len(stop) - 1``
    characters, which could start a stop string, are held back until the next
    token decides.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str], lazy: bool = False) -> None:
        self.decode = decode
        self.stop = stop
        self.per_token = bool(stop) or not lazy  # a stop string is looked for as each token arrives
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.tokens: list[int] = []
        self.prefix = 0  # tokens[prefix:read] were shown last; their text is the context of the next decode
        self.read = 0
        self.prefix_text = ""  # decode(tokens[prefix:read])
        self.held = ""  # decoded but not shown: it could start a stop string
        self.text = ""  # shown so far
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated token; returns the text that is now safe to show (maybe empty)."""
        self.tokens.append(token)
        if not self.per_token:
            return ""
        window = self.decode(self.tokens[self.prefix :])
        new = window[len(self.prefix_text) :]
        complete = bool(new) and not window.endswith("\ufffd")  # else half a character: the next token decides
        if complete:
            self.prefix, self.read = self.read, len(self.tokens)
            self.prefix_text = self.decode(self.tokens[self.prefix : self.read])
        seen = self.held + (new if complete else new.rstrip("\ufffd"))
        if self.stop and self._find_stop(seen) >= 0:
            return self._stop_at(seen)
        if not complete:  # not kept: the next window decodes it again
            return ""
        safe = len(seen) - self.hold
        self.held = seen[max(safe, 0) :]
        return self._show(seen[:safe]) if safe > 0 else ""

    def finish(self) -> str:
        """The row ended (length, EOS, cancel): release what was held back (up to a stop string in it)."""
        if self.stopped:
            return ""
        full = self.decode(self.tokens)
        if full.startswith(self.text):
            rest = full[len(self.text) :]
        else:  # re-spelled: what is new
            rest = self.held + self.decode(self.tokens[self.prefix :])[len(self.prefix_text) :]
        if self.stop and self._find_stop(rest) >= 0:
            return self._stop_at(rest)
        return self._show(rest)

    def _find_stop(self, text: str) -> int:
        """Where the first stop string in ``text`` starts, or -1."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits, default=-1)

    def _stop_at(self, text: str) -> str:
        self.stopped = True
        self.held = ""
        return self._show(text[: self._find_stop(text)])

    def _show(self, delta: str) -> str:
        self.text += delta
        return delta
