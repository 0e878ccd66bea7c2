"""OpenAI-compatible ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``, routed to light pools.

``/v1/models`` lists every served model: the light pools' models and adapters,
and each embeddings pool's model (``retrieval/all-MiniLM-L6-v2``, see ``embeddings``).

A model is named ``<pool>/<model or adapter>`` (``light/tiny``, ``light/my-adapter``;
a hub id keeps its slash: ``light/Qwen/Qwen2.5-0.5B-Instruct``); the prefix picks
the pool, any pool whose worker has the ``chat`` and ``models`` ops. Bodies
follow OpenAI's schema (unknown fields are accepted and ignored, as OpenAI-style
servers do); ``stream: true`` answers Server-Sent Events chunks ending with
``data: [DONE]``. Every error on these routes is OpenAI's body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.stream import Stream
from orchestrator.errors import InvalidArguments, OpNotFound, OrchestratorError, PoolNotFound
from orchestrator.gateway.guard import openai_error
from orchestrator.gateway.openai import embeddings

SSE = "text/event-stream"
LIGHT_OPS = ("chat", "models")


class _Body(BaseModel):
    """Fields shared by both completion routes."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="<pool>/<model or adapter>, e.g. light/tiny.")
    max_tokens: int | None = Field(None, description="Tokens to generate at most.")
    max_completion_tokens: int | None = Field(None, description="Newer name of max_tokens.")
    temperature: float | None = Field(None, description="0 is greedy; default 1.")
    top_p: float | None = Field(None, description="Nucleus sampling; default 1.")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences.")
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    n: int = Field(1, description="Choices per prompt.")
    stream: bool = Field(False, description="Answer Server-Sent Events chunks.")
    stream_options: dict[str, Any] | None = Field(None, description='{"include_usage": true} adds a usage chunk.')
    response_format: dict[str, Any] | None = Field(
        None, description='Structured outputs: {"type": "json_object"} or {"type": "json_schema", ...}.'
    )

    def op_args(self, name: str) -> dict[str, Any]:
        """The worker op's arguments (unset fields take the op's defaults)."""
        args: dict[str, Any] = {"model": name, "n": self.n}
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        for key, value in (
            ("max_tokens", max_tokens),
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("stop", self.stop),
            ("seed", self.seed),
            ("response_format", self.response_format),
        ):
            if value is not None:
                args[key] = value
        return args


class ChatBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[dict[str, Any]] = Field(description="The conversation.")


class CompletionBody(_Body):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(description="A prompt or a list of prompts.")


def from_orchestrator_error(exc: OrchestratorError, model: str | None = None) -> JSONResponse:
    """An OrchestratorError in OpenAI's words: unknown pools, ops and models are 404 ``model_not_found``."""
    first = exc.detail[0] if isinstance(exc.detail, list) and exc.detail and isinstance(exc.detail[0], dict) else {}
    if isinstance(exc, PoolNotFound | OpNotFound) or first.get("code") == "model_not_found":
        message = exc.message if first.get("code") == "model_not_found" else f"the model {model!r} does not exist"
        return openai_error(404, message, "model", "model_not_found")
    param = first.get("field")
    return openai_error(exc.http_status, exc.message, str(param) if param else None, exc.code)


def split_model(model: str) -> tuple[str, str]:
    """``"light/tiny"`` -> ``("light", "tiny")``; a bare pool name means its base model."""
    pool, _, name = model.partition("/")
    if not pool:
        raise InvalidArguments(
            "model: expected <pool>/<model>", detail=[{"field": "model", "message": "expected <pool>/<model>"}]
        )
    return pool, name


async def _parse(request: Request, cls: type[_Body]) -> _Body:
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArguments(f"body is not valid JSON: {exc}", detail=[{"field": "body"}]) from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "body"
        raise InvalidArguments(f"{field}: {error['msg']}", detail=[{"field": field}]) from None


def router(orch: Orchestrator) -> APIRouter:
    """The chat/completions routes over ``orch``'s light pools."""
    api = APIRouter(tags=["openai"])

    async def models() -> list[dict[str, Any]]:
        found = []
        for pool, entry in sorted(orch.router.table["pools"].items()):
            if not all(op in entry["ops"] for op in LIGHT_OPS):
                continue
            try:
                served = await orch.acall(pool, "models")
            except OrchestratorError:  # a failed or starting pool lists nothing
                continue
            created = int(time.time())
            for m in served:
                found.append({"id": f"{pool}/{m['id']}", "object": "model", "created": created, "owned_by": pool})
        return found + await embeddings.served_models(orch)

    @api.get("/v1/models")
    async def list_models() -> Response:
        """Every model and adapter the light pools serve, and each embeddings pool's model, as ``<pool>/<name>``."""
        try:
            return JSONResponse({"object": "list", "data": await models()})
        except OrchestratorError as exc:
            return from_orchestrator_error(exc)

    @api.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        """One model."""
        for entry in await models():
            if entry["id"] == model:
                return JSONResponse(entry)
        return openai_error(404, f"the model {model!r} does not exist", "model", "model_not_found")

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (``stream: true`` for SSE chunks)."""
        return await _complete(orch, request, ChatBody, "chat", _chat_payload, _chat_chunks)

    @api.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """OpenAI (legacy) text completions (``stream: true`` for SSE chunks)."""
        return await _complete(orch, request, CompletionBody, "generate", _text_payload, _text_chunks)

    return api


Chunks = Callable[[dict[str, Any], dict[str, Any]], list[dict[str, Any]]]


async def _complete(
    orch: Orchestrator,
    request: Request,
    cls: type[_Body],
    op: str,
    payload: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
    chunks: Chunks,
) -> Response:
    model: str | None = None
    try:
        body = await _parse(request, cls)
        model = body.model
        pool, name = split_model(body.model)
        orch.router.check_op(pool, op)
        args = body.op_args(name)
        if isinstance(body, ChatBody):
            args["messages"] = body.messages
        elif isinstance(body, CompletionBody):
            args["prompt"] = body.prompt
        head = {
            "id": f"{'chatcmpl' if op == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body.model,
        }
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return await _stream(orch, pool, f"{op}_stream", args, head, chunks, include_usage, body.n or 1)
        result = await orch.acall(pool, op, **args)
        return JSONResponse(payload(head, result))
    except OrchestratorError as exc:
        return from_orchestrator_error(exc, model)


async def _stream(
    orch: Orchestrator,
    pool: str,
    op: str,
    args: dict[str, Any],
    head: dict[str, Any],
    chunks: Chunks,
    include_usage: bool,
    n: int,
) -> Response:
    stream = Stream(orch.router, pool, op, args)
    # Read the first event before answering, so bad requests still get their real status.
    try:
        first: list[Any] = [await stream.__anext__()]
    except StopAsyncIteration:
        first = []
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(
        _sse(stream, first, head, chunks, include_usage, n), media_type=SSE, headers={"Cache-Control": "no-store"}
    )


async def _sse(
    stream: Stream, first: list[Any], head: dict[str, Any], chunks: Chunks, include_usage: bool, n: int
) -> AsyncIterator[str]:
    """OpenAI's chunks; the client going away cancels the generation (finally)."""
    try:
        for chunk in chunks(head, {"start": True, "n": n}):
            yield _data(chunk)
        for event in first:
            for chunk in chunks(head, event):
                yield _data(chunk)
        if first:
            async for event in stream:
                for chunk in chunks(head, event):
                    yield _data(chunk)
        if include_usage and stream.result is not None:
            obj = "chat.completion.chunk" if head["id"].startswith("chatcmpl") else "text_completion"
            yield _data({**head, "object": obj, "choices": [], "usage": stream.result["usage"]})
        yield "data: [DONE]\n\n"
    except OrchestratorError as exc:
        body = json.loads(bytes(from_orchestrator_error(exc).body))
        yield _data(body)
    finally:
        stream.close()


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _chat_payload(head: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    choices = [
        {
            "index": c["index"],
            "message": {"role": "assistant", "content": c["text"]},
            "finish_reason": _reason(c["finish_reason"]),
            "logprobs": None,
        }
        for c in result["choices"]
    ]
    return {**head, "object": "chat.completion", "choices": choices, "usage": result["usage"]}


def _text_payload(head: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    choices = [
        {"index": c["index"], "text": c["text"], "finish_reason": _reason(c["finish_reason"]), "logprobs": None}
        for c in result["choices"]
    ]
    return {**head, "object": "text_completion", "choices": choices, "usage": result["usage"]}


def _chat_chunks(head: dict[str, Any], event: dict[str, Any]) -> list[dict[str, Any]]:
    base = {**head, "object": "chat.completion.chunk"}
    if event.get("start"):  # each choice opens with its role, as OpenAI streams n > 1
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        return [
            {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None, "logprobs": None}]}
            for i in range(event["n"])
        ]
    out = []
    if event["text"]:
        choice = {"index": event["index"], "delta": {"content": event["text"]}, "finish_reason": None, "logprobs": None}
        out.append({**base, "choices": [choice]})
    if "finish_reason" in event:
        reason = _reason(event["finish_reason"])
        out.append({**base, "choices": [{"index": event["index"], "delta": {}, "finish_reason": reason}]})
    return out


def _text_chunks(head: dict[str, Any], event: dict[str, Any]) -> list[dict[str, Any]]:
    if event.get("start"):
        return []
    reason = _reason(event["finish_reason"]) if "finish_reason" in event else None
    if not event["text"] and reason is None:
        return []
    choice = {"index": event["index"], "text": event["text"], "finish_reason": reason, "logprobs": None}
    return [{**head, "object": "text_completion", "choices": [choice]}]


def _reason(reason: str) -> str:
    """A cancelled choice reports ``stop`` (OpenAI knows only stop, length and tool/content reasons)."""
    return "length" if reason == "length" else "stop"
