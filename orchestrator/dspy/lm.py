"""``PoolLM``: DSPy chat calls to a pool's model in one Ray hop (no HTTP), with structured outputs.

A pool model is named like the OpenAI routes name it, ``<pool>/<model or adapter>``
(``light/tiny``; a bare ``light`` is the pool's base model). The LM declares
``response_format`` support, so DSPy's JSON adapter sends each signature's output
schema and the light pool decodes under it: every answer parses, even from a
random model. Concurrent calls (DSPy's evaluation threads) reach the pool
together, which batches them and spreads them over its actors.

Without a handle, an LM uses this process's own (``handles.current()``: the
pool actor's ``ctx.orchestrator``, or the driver's ``start()``/``connect()``),
looked up at each call, so a program may build its LMs before a handle exists;
copies (DSPy deep-copies programs) share the handle, never copy it.

``lm_for`` turns an ``optimize``/``evaluate`` model argument into an LM: a pool
model, or an external OpenAI-compatible endpoint whose key is read from this
process's environment (never carried in a job's arguments).
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InvalidArguments

if TYPE_CHECKING:
    from orchestrator.dataplane.handles import Orchestrator

dspy: Any = importlib.import_module("dspy")

CHAT_ARGS = ("max_tokens", "temperature", "top_p", "stop", "seed", "n", "response_format")


def resolve(handle: Orchestrator | Callable[[], Orchestrator] | None) -> Orchestrator:
    """The handle to call through: the given one (a factory is called: actors build theirs lazily), or this
    process's own when none was given."""
    if handle is None:
        from orchestrator.dataplane.handles import current

        return current()
    return handle() if callable(handle) and not hasattr(handle, "call") else handle  # type: ignore[return-value]


def share_handle(obj: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy`` of ``obj`` whose ``_handle`` (an orchestrator handle: threads and Ray actors) is shared."""
    clone = object.__new__(type(obj))  # not copy.copy: that would go through a __getstate__ that drops the handle
    memo[id(obj)] = clone
    for key, value in vars(obj).items():
        object.__setattr__(clone, key, value if key == "_handle" else copy.deepcopy(value, memo))
    return clone


class PoolLM(dspy.BaseLM):
    """A DSPy LM served by a pool (``model="light/tiny"``) through an orchestrator handle (default: this
    process's own)."""

    def __init__(
        self,
        model: str,
        orchestrator: Orchestrator | Callable[[], Orchestrator] | None = None,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        structured: bool = True,
        **kwargs: Any,
    ) -> None:
        pool, _, name = model.partition("/")
        if not pool:
            raise InvalidArguments("model: expected <pool>/<model>", detail=[{"field": "model"}])
        super().__init__(model=model, model_type="chat", temperature=temperature, max_tokens=max_tokens, **kwargs)
        self.pool, self.name, self.structured = pool, name or None, structured
        self._handle = orchestrator

    @property
    def orchestrator(self) -> Orchestrator:
        """The handle calls go through (looked up at each call when none was given)."""
        return resolve(self._handle)

    def __deepcopy__(self, memo: dict[int, Any]) -> PoolLM:
        return share_handle(self, memo)

    @property
    def supports_response_schema(self) -> bool:
        return self.structured

    @property
    def supported_params(self) -> set[str]:
        return {"response_format"} if self.structured else set()

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        """One chat call to the pool; returns an OpenAI-shaped response."""
        result = self.orchestrator.call(self.pool, "chat", **self._args(prompt, messages, kwargs))
        return _response(result)

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        """``forward`` without blocking the event loop."""
        result = await self.orchestrator.acall(self.pool, "chat", **self._args(prompt, messages, kwargs))
        return _response(result)

    def dump_state(self) -> dict[str, Any]:
        return {"model": self.model, "structured": self.structured, **self.kwargs}

    def _args(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        merged = {**self.kwargs, **kwargs}
        args: dict[str, Any] = {"messages": messages or [{"role": "user", "content": prompt or ""}]}
        if self.name:
            args["model"] = self.name
        for key in CHAT_ARGS:
            if merged.get(key) is not None:
                args[key] = merged[key]
        if "response_format" in args:
            args["response_format"] = response_format(args["response_format"])
        return args


def response_format(value: Any) -> dict[str, Any]:
    """DSPy passes a pydantic model class for a schema; the pool takes OpenAI's dict."""
    if isinstance(value, dict):
        return value
    schema = getattr(value, "model_json_schema", None)
    if schema is None:
        raise TypeError(f"response_format: expected a dict or a pydantic model, got {value!r}")
    return {"type": "json_schema", "json_schema": {"name": value.__name__, "schema": schema(), "strict": True}}


def _response(result: dict[str, Any]) -> Any:
    choices = [
        SimpleNamespace(
            index=c["index"],
            message=SimpleNamespace(role="assistant", content=c["text"], tool_calls=None),
            finish_reason=c["finish_reason"],
        )
        for c in result["choices"]
    ]
    return SimpleNamespace(choices=choices, usage=dict(result["usage"]), model=result["model"], cache_hit=False)


def lm_for(
    spec: str | dict[str, Any], orchestrator: Orchestrator | Callable[[], Orchestrator] | None, field: str
) -> Any:
    """The LM a job's ``model`` argument names: ``"pool/model"`` or ``{"model", "api_base", "api_key_env"}``."""
    if isinstance(spec, str):
        return PoolLM(spec, orchestrator)
    key_env = spec.get("api_key_env")
    key = os.environ.get(key_env) if key_env else None
    if key_env and key is None:
        message = f"the environment variable {key_env} is not set in this pool"
        raise InvalidArguments(f"{field}.api_key_env: {message}", detail=[{"field": f"{field}.api_key_env"}])
    extra = {k: v for k, v in spec.items() if k not in ("model", "api_base", "api_key_env")}
    return dspy.LM(spec["model"], api_base=spec.get("api_base"), api_key=key, cache=False, **extra)
