"""Running an op over HTTP: the JSON body as arguments, and the answer as JSON or Server-Sent Events.

Shared by the pool routes and the session routes: the same Router as the
in-process API calls the actors directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from orchestrator.dataplane.handles import Orchestrator, Session
from orchestrator.dataplane.stream import Stream
from orchestrator.errors import InvalidArguments, OpFailed, OrchestratorError
from orchestrator.gateway.jsonbody import dumps, sse_message

SSE = "text/event-stream"

ADMIN_BODY = {
    "requestBody": {
        "required": True,
        "description": "An empty JSON object: admin routes take a JSON request only (a web page cannot send one "
        "cross-site without a CORS preflight).",
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    }
}

OP_BODY = {
    "requestBody": {
        "required": False,
        "description": "The op's keyword arguments as a JSON object.",
        "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
    }
}


async def op_arguments(request: Request, pool: str | None, op: str) -> dict[str, Any]:
    """The JSON object body of an op call ({} when empty); malformed or non-object bodies are 422."""
    if request.headers.get("content-length") == "0":
        return {}
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        args = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = [{"field": "body", "message": f"not valid JSON: {exc}"}]
        raise InvalidArguments(f"body: not valid JSON: {exc}", pool=pool, op=op, detail=detail) from None
    if not isinstance(args, dict):
        message = f"expected a JSON object of the op's arguments, got {type(args).__name__}"
        detail = [{"field": "body", "message": message}]
        raise InvalidArguments(f"body: {message}", pool=pool, op=op, detail=detail)
    return args


async def run_call(
    orch: Orchestrator,
    pool: str,
    op: str,
    args: dict[str, Any],
    session: Session | None,
    request: Request,
    stream_op: str | None = None,
    wrap: bool = True,
) -> Response:
    """The op's answer as JSON (``{"result": ...}``, or the bare value without ``wrap``); with ``Accept:
    text/event-stream``, ``stream_op`` (default: ``op``) as Server-Sent Events."""
    if SSE in request.headers.get("accept", ""):
        stream = Stream(orch.router, pool, stream_op or op, args, session)
        # Read the first item before answering, so bad arguments and the like get their real status.
        try:
            first: list[Any] = [await stream.__anext__()]
        except StopAsyncIteration:
            first = []
        return StreamingResponse(_sse(stream, first), media_type=SSE, headers={"Cache-Control": "no-store"})
    router = orch.router
    steps = router.call_steps(pool, op, args, session=session)
    return json_result(await router.arun(steps), pool, op, wrap)


def json_result(value: Any, pool: str, op: str, wrap: bool = True) -> Response:
    """``{"result": value}`` (or ``value`` itself) as a JSON response; a value JSON cannot carry is op_failed."""
    try:
        body = dumps({"result": value} if wrap else value)
    except (TypeError, ValueError) as exc:
        raise OpFailed(f"the op's result is not JSON-serializable: {exc}", pool=pool, op=op) from None
    return Response(body, media_type="application/json")


async def _sse(stream: Stream, first: list[Any]) -> AsyncIterator[str]:
    """Events, then ``result`` or ``error``. A client that goes away cancels the op (finally)."""
    n = 0
    try:
        for event in first:
            n += 1
            yield sse_message(n, "event", event)
        if first:
            async for event in stream:
                n += 1
                yield sse_message(n, "event", event)
        yield sse_message(n + 1, "result", {"result": stream.result})
    except OrchestratorError as exc:
        yield sse_message(n + 1, "error", {"error": exc.to_dict()})
    finally:
        stream.close()
