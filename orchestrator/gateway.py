"""The HTTP gateway: FastAPI on the data plane.

Calls go from here straight to worker actors through the same Router as the
in-process API (the coordinator only feeds the routing table). Every error is
the DESIGN body ``{"error": {code, message, pool, op, retryable, detail}}``
with its status; streaming ops answer Server-Sent Events when asked for
``text/event-stream``. A guard in front of the app checks the bearer token and
the body size before anything else runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api import Orchestrator, Session, Stream, job_outcome
from orchestrator.errors import (
    InvalidArguments,
    InvalidConfig,
    OpFailed,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    SessionNotFound,
    Timeout,
    Unauthorized,
)
from orchestrator.router import unwrap
from orchestrator.sse import sse_message

OPEN_PATHS = {"/healthz"}
SSE = "text/event-stream"


def error_response(exc: OrchestratorError) -> JSONResponse:
    """An OrchestratorError as its HTTP status and DESIGN body (429 carries Retry-After)."""
    headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


class Guard:
    """ASGI middleware: bearer token (constant-time) on every path but /healthz, then the body limit.

    The limit is enforced on Content-Length before the app runs, and on the
    bytes actually received for chunked bodies, so a large body is never read whole.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization, length = b"", None
        for name, value in scope["headers"]:  # only the two headers we need; no dict of them all
            lowered = name.lower()
            if lowered == b"authorization":
                authorization = value
            elif lowered == b"content-length":
                length = value
        if not self._authorized(scope["path"], authorization):
            message = "missing or wrong bearer token" if authorization else "missing Authorization: Bearer header"
            await error_response(Unauthorized(message))(scope, receive, send)
            return
        if length is not None and length.isdigit():
            if int(length) > self.max_body:
                await self._too_large(scope, receive, send)
            else:  # the server never delivers more than Content-Length: nothing to count
                await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    def _authorized(self, path: str, authorization: bytes) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return True
        return hmac.compare_digest(authorization, f"Bearer {self.token}".encode())

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked): count the bytes as they arrive."""
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body over the limit of {self.max_body} bytes")
        await error_response(error)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class JobSubmit(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(description="The pool to run the job in.")
    op: str = Field(description="The op to run (usually a streaming op).")
    args: dict[str, Any] = Field(default_factory=dict, description="The op's keyword arguments.")
    session: str | None = Field(None, description="Run inside this session (its actor and state).")
    max_retries: int | None = Field(None, ge=0, description="Re-runs after the actor dies (default: jobs.max_retries).")


class SessionCreate(BaseModel):
    """Body of POST /v1/sessions."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(description="The pool to open the session in.")
    ttl_s: float | None = Field(None, gt=0, description="Close the session this long after it opens.")


# Op bodies are parsed by hand (any content type, clear errors naming the body), so document them here.
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


def create_app(
    orch: Orchestrator,
    token: str | None = None,
    max_body: int = 16 * 1024**2,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The gateway app over a running orchestrator (wrapped in the token and body-size guard)."""
    app = FastAPI(title="orchestrator", version="0.1.0", description="Supervised pools of Ray actors.")
    sessions: dict[str, Session] = {}
    coordinator = orch.coordinator

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            field = ".".join(loc) or "body"
            problems.append({"field": field, "message": str(error["msg"])})
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return error_response(InvalidArguments(text, detail=problems))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness (no auth)."""
        return {"status": "ok"}

    @app.get("/v1/pools", tags=["pools"])
    async def list_pools() -> dict[str, Any]:
        """Every pool with its actors, sessions, counters and recent events."""
        status = await coordinator.status.remote()
        return {"pools": [_with_queue(orch, p) for p in status.values()]}

    @app.get("/v1/pools/{pool}", tags=["pools"])
    async def get_pool(pool: str) -> dict[str, Any]:
        """One pool: actors (state, restarts, memory, pending reason), queue, sessions, ops."""
        status = await coordinator.status.remote()
        if pool not in status:
            orch.router.pool(pool)  # raises pool_not_found with the known pools
        return _with_queue(orch, status[pool])

    @app.post("/v1/pools/{pool}/ops/{op}", tags=["ops"], openapi_extra=OP_BODY)
    async def call_op(pool: str, op: str, request: Request) -> Response:
        """Run an op. With ``Accept: text/event-stream`` a streaming op answers Server-Sent Events."""
        return await _run(orch, pool, op, await op_arguments(request, pool, op), None, request)

    @app.post("/v1/sessions", tags=["sessions"], status_code=201)
    async def open_session(body: SessionCreate) -> dict[str, Any]:
        """Open a session pinned to one actor of the pool."""
        orch.router.pool(body.pool)
        record = unwrap(await coordinator.create_session.remote(body.pool, body.ttl_s))
        sessions[record["id"]] = Session(orch, record)
        return dict(record)

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(pool: str | None = Query(None, description="Only this pool's sessions.")) -> dict[str, Any]:
        """Open sessions."""
        return {"sessions": await coordinator.list_sessions.remote(pool)}

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str) -> dict[str, Any]:
        """One open session's record."""
        return dict(unwrap(await coordinator.get_session.remote(session_id)))

    @app.delete("/v1/sessions/{session_id}", tags=["sessions"])
    async def close_session(session_id: str) -> dict[str, Any]:
        """Close a session and drop its state."""
        sessions.pop(session_id, None)
        unwrap(await coordinator.close_session.remote(session_id))
        return {"id": session_id, "closed": True}

    @app.post("/v1/sessions/{session_id}/ops/{op}", tags=["sessions"], openapi_extra=OP_BODY)
    async def call_session_op(session_id: str, op: str, request: Request) -> Response:
        """Run an op inside a session (in order with the session's other calls)."""
        session = sessions.get(session_id)
        if session is None:
            record = unwrap(await coordinator.get_session.remote(session_id))
            session = sessions.setdefault(session_id, Session(orch, record))
        args = await op_arguments(request, session.pool, op)
        try:
            return await _run(orch, session.pool, op, args, session, request)
        except SessionNotFound:
            sessions.pop(session_id, None)
            raise

    @app.post("/v1/jobs", tags=["jobs"], status_code=202)
    async def submit_job(body: JobSubmit) -> dict[str, Any]:
        """Queue a long-running job; answers at once with its record (unknown pool/op and bad args: 4xx now)."""
        return _job_json(
            unwrap(await coordinator.submit_job.remote(body.pool, body.op, body.args, body.session, body.max_retries))
        )

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        pool: str | None = Query(None, description="Only this pool's jobs."),
        status: str | None = Query(None, description="Only jobs in this state."),
        limit: int = Query(100, ge=1, le=10_000, description="At most this many, newest first."),
    ) -> dict[str, Any]:
        """Jobs, newest first."""
        return {"jobs": [_job_json(job) for job in await coordinator.list_jobs.remote(pool, status, limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """One job: status, attempts, events logged, result or error."""
        return _job_json(unwrap(await coordinator.get_job.remote(job_id)))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(
        job_id: str,
        request: Request,
        after: int = Query(0, ge=0, description="Only events after this sequence number."),
        follow: bool = Query(True, description="Keep the stream open until the job ends."),
    ) -> StreamingResponse:
        """The job's event log as Server-Sent Events (``id`` = sequence number; honours ``Last-Event-ID``).

        Each logged event is ``event: event``; when the job is over, a last ``event: end`` carries its status.
        """
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else after
        first = unwrap(await coordinator.job_events.remote(job_id, start, 0.0))  # job_not_found before answering
        return StreamingResponse(
            _job_sse(coordinator, job_id, start, first, follow), media_type=SSE, headers={"Cache-Control": "no-store"}
        )

    @app.get("/v1/jobs/{job_id}/result", tags=["jobs"])
    async def job_result(
        job_id: str, timeout: float = Query(0.0, ge=0, le=600, description="Wait up to this many seconds.")
    ) -> dict[str, Any]:
        """The job's result; its error (with the error's status) if it failed; 504 if not done in time."""
        deadline = time.monotonic() + timeout
        while True:
            job = unwrap(await coordinator.get_job.remote(job_id))
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return {"id": job_id, "status": job["status"], "result": job_outcome(job)}
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"job {job_id} is still {job['status']}", retryable=True)
            await coordinator.job_events.remote(job_id, job["events"], min(left, 5.0))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel: the op sees ``ctx.cancelled`` and is killed after the grace period. A finished job: a no-op."""
        return dict(unwrap(await coordinator.cancel_job.remote(job_id)))

    if on_shutdown is not None:

        @app.post("/v1/shutdown", tags=["admin"], status_code=202)
        async def shutdown() -> dict[str, str]:
            """Ask the server (``orchestrator up``) to drain and stop."""
            on_shutdown()
            return {"status": "shutting down"}

    from orchestrator.openai import routers

    for openai_router in routers(orch):
        app.include_router(openai_router)
    app.add_middleware(Guard, token=token, max_body=max_body)
    return app


def _with_queue(orch: Orchestrator, pool: dict[str, Any]) -> dict[str, Any]:
    """Add this gateway's outstanding and queued calls for the pool."""
    entry = orch.router.table["pools"].get(pool["name"])
    outstanding = orch.router.pool_outstanding.get(pool["name"], 0)
    capacity = len(entry["actors"]) * entry["limits"]["concurrency"] if entry else 0
    return {**pool, "outstanding": outstanding, "queued": max(0, outstanding - capacity)}


async def _run(
    orch: Orchestrator, pool: str, op: str, args: dict[str, Any], session: Session | None, request: Request
) -> Response:
    if SSE in request.headers.get("accept", ""):
        stream = Stream(orch.router, pool, op, args, session)
        # Read the first item before answering, so bad arguments and the like get their real status.
        try:
            first: list[Any] = [await stream.__anext__()]
        except StopAsyncIteration:
            first = []
        return StreamingResponse(_sse(stream, first), media_type=SSE, headers={"Cache-Control": "no-store"})
    router = orch.router
    steps = router.call_steps(pool, op, args, session=session)
    return _json_result(await router.arun(steps), pool, op)


def _json_result(value: Any, pool: str, op: str) -> Response:
    try:
        body = json.dumps({"result": value}, separators=(",", ":"))
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


def _job_json(job: dict[str, Any]) -> dict[str, Any]:
    """A job record as JSON (non-JSON results and arguments become their repr)."""
    return json.loads(json.dumps(job, default=repr))


async def _job_sse(
    coordinator: Any, job_id: str, after: int, first: dict[str, Any], follow: bool
) -> AsyncIterator[str]:
    """Logged events from the store after ``after``; ``end`` once the job is over (or at once without follow)."""
    batch = first
    while True:
        for seq, event in batch["events"]:
            after = seq
            yield sse_message(seq, "event", event)
        if batch["finished"] or (not follow and not batch["events"]):
            yield sse_message(after, "end", {"status": batch["status"]})
            return
        batch = unwrap(await coordinator.job_events.remote(job_id, after, 0.0 if not follow else 10.0))


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidConfig(
            f"refusing to bind the gateway to {host} without a token: set ORCHESTRATOR_TOKEN "
            "(or gateway.token in pools.yaml), or bind 127.0.0.1"
        )


def serve(
    orch: Orchestrator,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body: int = 16 * 1024**2,
    on_ready: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Serve the gateway with uvicorn until SIGINT/SIGTERM (or POST /v1/shutdown, when ``on_shutdown`` is given)."""
    import uvicorn

    check_bind(host, token)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if on_ready is not None:
                bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
                on_ready(f"http://{bound[0]}:{bound[1]}")

    app = create_app(orch, token=token, max_body=max_body, on_shutdown=on_shutdown)
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()
