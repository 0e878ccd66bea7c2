"""The I/O-free core of the SDK: every rule, and every client operation written once as steps.

Rules: how a request is built (URL segments, headers, token, timeout), which
failures are retried and how long to wait (``backoff_delay``), how an error
answer becomes its ``OrchestratorError`` class (``decode_error``). ``BaseClient``
holds them and each public operation (``health`` ... ``shutdown``) as a
generator of steps (see ``steps``); ``Client`` and ``AsyncClient`` only do the
I/O. Streams and job event logs are read by ``events``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar, get_args, get_origin
from urllib.parse import quote

import httpx

from orchestrator.client.steps import Steps, operation
from orchestrator.errors import (
    InvalidArguments,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    SessionNotFound,
    Unauthorized,
)

DEFAULT_URL = "http://127.0.0.1:8000"
JSON_TYPE = "application/json"
EVENT_STREAM = "text/event-stream"
USER_AGENT = "orchestrator-client/0.1"
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
JOB_WAIT_S = 30.0  # one long-poll of GET /v1/jobs/{id}/result
# A non-JSON error body (from a proxy, say) still gets the class its status alone names.
STATUS_ERRORS: dict[int, type[OrchestratorError]] = {
    cls.http_status: cls for cls in (Unauthorized, PayloadTooLarge, Overloaded)
}
# Failures before any response, retried for idempotent ops (not read timeouts: the op runs, slowly).
RETRIED_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)

StreamT = TypeVar("StreamT")
SessionT = TypeVar("SessionT")
RetrievalT = TypeVar("RetrievalT")
JobT = TypeVar("JobT")


def backoff_delay(attempt: int, retry_after: str | None = None) -> float:
    """Seconds before retry ``attempt + 1``: the server's ``Retry-After`` seconds, else 0.1 s doubling up to 2 s."""
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            seconds = float(retry_after)
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
    return min(BACKOFF_FIRST_S * 2 ** min(attempt, 32), BACKOFF_MAX_S)


def decode_error(status: int, content: bytes, pool: str | None = None, op: str | None = None) -> OrchestratorError:
    """The error a non-2xx response means: the class its ``{"error": ...}`` body names, else one from its status."""
    with contextlib.suppress(ValueError):
        body = json.loads(content)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return OrchestratorError.from_dict(body["error"])
    text = content.decode(errors="replace").strip()[:2000] or "(empty body)"
    return STATUS_ERRORS.get(status, OrchestratorError)(f"HTTP {status} from the gateway: {text}", pool=pool, op=op)


def is_event_stream(response: httpx.Response) -> bool:
    """Whether this is a 2xx Server-Sent Events response (whose body is read as it comes)."""
    return response.is_success and response.headers.get("content-type", "").startswith(EVENT_STREAM)


def response_field(response: httpx.Response, key: str | None = None) -> Any:
    """The JSON body of a (read) response, or its ``key``; anything else is an OrchestratorError."""
    try:
        body = response.json()
    except ValueError:
        text = response.text[:200]
        raise OrchestratorError(f"the gateway at {response.request.url} answered non-JSON: {text}") from None
    if key is None:
        return body
    if not isinstance(body, dict) or key not in body:
        raise OrchestratorError(f"the gateway at {response.request.url} answered without {key!r}: {body!r:.200}")
    return body[key]


def retrieval_args(**args: Any) -> dict[str, Any]:
    """A retrieval op's arguments, leaving out those not given (None) so the worker's defaults apply."""
    return {name: value for name, value in args.items() if value is not None}


class BaseClient(Generic[StreamT, SessionT, RetrievalT, JobT]):
    """Everything a client does, without I/O: requests, the retry rules and each public operation, as steps.

    Retries (up to ``retries`` times, waiting ``backoff_delay``): an ``overloaded``
    answer, for any request; a connection failure before any response, only for
    requests that are safe to repeat (GET, DELETE, and ops the pool declares
    ``idempotent``, learnt once per pool from ``GET /v1/pools/{pool}``). A
    stream is never retried once its response has begun.

    A subclass does the I/O (``_run`` and ``_iterate``, over ``http``, an
    ``http_class``); its type arguments are the handle classes its operations
    return (``stream_class`` ... ``job_class``).
    """

    http_class: Callable[..., Any]  # httpx.Client or httpx.AsyncClient
    stream_class: Callable[[Any, httpx.Response, str, str], StreamT]
    session_class: Callable[[Any, dict[str, Any]], SessionT]
    retrieval_class: Callable[[Any, dict[str, Any]], RetrievalT]
    job_class: Callable[[Any, dict[str, Any]], JobT]

    def __init_subclass__(cls, **options: Any) -> None:
        super().__init_subclass__(**options)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is BaseClient:  # Client(BaseClient[Stream, Session, RetrievalSession, Job])
                cls.stream_class, cls.session_class, cls.retrieval_class, cls.job_class = get_args(base)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 60.0,
        transport: Any = None,
        retries: int = 3,
    ) -> None:
        """``transport``: an httpx transport for ``http`` (async for AsyncClient), e.g. ``httpx.MockTransport``."""
        if url.partition("://")[0] not in ("http", "https"):
            raise ValueError(f"the gateway URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.idempotent_ops: dict[str, set[str]] = {}  # pool -> its idempotent ops
        self.http = self.http_class(transport=transport)

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        """A client for ``$ORCHESTRATOR_URL`` (default http://127.0.0.1:8000) with ``$ORCHESTRATOR_TOKEN``."""
        url = os.environ.get("ORCHESTRATOR_URL") or DEFAULT_URL
        return cls(url=url, token=os.environ.get("ORCHESTRATOR_TOKEN") or None, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"  # never the token

    # ------------------------------------------------------------ requests
    def headers(self, accept: str = JSON_TYPE) -> dict[str, str]:
        """Headers of every request: ``Accept``, ``User-Agent`` and, with a token, ``Authorization: Bearer``."""
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def build_request(self, method: str, *segments: str, body: Any = None, **options: Any) -> httpx.Request:
        """A request to ``url/seg/ments`` (each percent-encoded), ``body`` as JSON; options: ``params``, ``accept``."""
        headers = self.headers(options.pop("accept", JSON_TYPE))
        if body is not None:
            options["content"] = json.dumps(body).encode()
            headers["Content-Type"] = JSON_TYPE
        url = self.url + "".join("/" + quote(segment, safe="") for segment in segments)
        timeout = httpx.Timeout(self.timeout).as_dict()  # httpx.Client.send reads it from the request
        return httpx.Request(method, url, headers=headers, extensions={"timeout": timeout}, **options)

    # ----------------------------------------------------- steps they share
    def _exchange(
        self, request: httpx.Request, idempotent: bool, pool: str | None = None, op: str | None = None
    ) -> Steps[httpx.Response]:
        """Send ``request`` under the retry rules; returns the 2xx response, else raises the decoded error."""
        attempt = 0
        while True:
            try:
                response: httpx.Response = yield request
            except httpx.RequestError as exc:
                if not (idempotent and isinstance(exc, RETRIED_TRANSPORT) and attempt < self.retries):
                    message = f"cannot reach the gateway at {self.url}: {type(exc).__name__}: {exc}"
                    raise OrchestratorError(message, pool=pool, op=op, retryable=True) from exc
                delay = backoff_delay(attempt)
            else:
                if response.is_success:
                    return response
                error = decode_error(response.status_code, response.content, pool, op)
                if not (isinstance(error, Overloaded) and attempt < self.retries):
                    raise error
                delay = backoff_delay(attempt, response.headers.get("retry-after"))
            attempt += 1
            yield delay

    def _get(self, *segments: str, params: Any = None, key: str | None = None, pool: str | None = None) -> Steps[Any]:
        request = self.build_request("GET", *segments, params=params)
        return response_field((yield from self._exchange(request, idempotent=True, pool=pool)), key)

    def _remember(self, pool: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """Cache which of a pool's ops are idempotent, from its status."""
        ops = pool.get("ops") or {}
        self.idempotent_ops[name or pool["name"]] = {op for op, spec in ops.items() if spec.get("idempotent")}
        return pool

    def _pool(self, name: str) -> Steps[dict[str, Any]]:
        return self._remember((yield from self._get("v1", "pools", name, pool=name)), name)

    def _op(
        self, pool: str, op: str, args: dict[str, Any], session: str | None, **options: Any
    ) -> Steps[httpx.Response]:
        """POST an op (of a pool, or of a session); the pool's idempotent ops are fetched first, once."""
        if self.retries and pool not in self.idempotent_ops:
            yield from self._pool(pool)
        target = ("v1", "sessions", session) if session else ("v1", "pools", pool)
        try:
            request = self.build_request("POST", *target, "ops", op, body=args, **options)
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(f"arguments must be JSON-serializable: {exc}", pool=pool, op=op) from None
        idempotent = op in self.idempotent_ops.get(pool, ())
        return (yield from self._exchange(request, idempotent, pool, op))

    def _call(self, pool: str, op: str, args: dict[str, Any], session: str | None = None) -> Steps[Any]:
        return response_field((yield from self._op(pool, op, args, session)), "result")

    def _stream(self, pool: str, op: str, args: dict[str, Any], session: str | None = None) -> Steps[StreamT]:
        response = yield from self._op(pool, op, args, session, accept=EVENT_STREAM)
        return self.stream_class(self, response, pool, op)

    def _open_session(self, pool: str, ttl_s: float | None) -> Steps[dict[str, Any]]:
        request = self.build_request("POST", "v1", "sessions", body={"pool": pool, "ttl_s": ttl_s})
        record = response_field((yield from self._exchange(request, idempotent=False, pool=pool)))
        if not isinstance(record, dict) or "id" not in record:
            raise OrchestratorError(f"the gateway opened a session without an id: {record!r:.200}", pool=pool)
        return {**record, "pool": record.get("pool") or pool}

    def _close_session(self, session_id: str) -> Steps[None]:
        with contextlib.suppress(SessionNotFound):  # already closed or expired: closing is idempotent
            yield from self._exchange(self.build_request("DELETE", "v1", "sessions", session_id), idempotent=True)

    def _job_result(self, job_id: str, timeout: float | None) -> Steps[Any]:
        """Long-poll the job's result, ``JOB_WAIT_S`` at a time, until it is done or ``timeout`` has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = JOB_WAIT_S if deadline is None else max(0.0, min(JOB_WAIT_S, deadline - time.monotonic()))
            request = self.build_request("GET", "v1", "jobs", job_id, "result", params={"timeout": left})
            try:
                return response_field((yield from self._exchange(request, idempotent=True)), "result")
            except OrchestratorError as exc:  # still running: wait again, until our own deadline
                if exc.code != "timeout" or (deadline is not None and time.monotonic() >= deadline):
                    raise

    # ----------------------------------------------------- public operations
    @operation
    def health(self) -> Steps[dict[str, Any]]:
        """``GET /healthz``: ``{"status": "ok"}``."""
        return dict((yield from self._get("healthz")))

    @operation
    def pools(self) -> Steps[list[dict[str, Any]]]:
        """Every pool's status: state, actors, sessions, ops, counters, recent events."""
        return [self._remember(pool) for pool in (yield from self._get("v1", "pools", key="pools"))]

    @operation
    def pool(self, name: str) -> Steps[dict[str, Any]]:
        """One pool's status (PoolNotFound if there is none of that name)."""
        return (yield from self._pool(name))

    @operation
    def call(self, pool: str, op: str, /, **args: Any) -> Steps[Any]:
        """Run ``op`` on ``pool`` with keyword arguments ``args``; returns its result."""
        return (yield from self._call(pool, op, args))

    @operation
    def stream(self, pool: str, op: str, /, **args: Any) -> Steps[StreamT]:
        """Start a streaming op: iterate the stream for its events, then read ``.result``.

        ``with client.stream(...) as s: for event in s``; ``async with await client.stream(...) as s: async for``.
        """
        return (yield from self._stream(pool, op, args))

    @operation
    def session(self, pool: str, ttl_s: float | None = None) -> Steps[SessionT]:
        """Open a session pinned to one actor of ``pool``: ``with client.session(pool) as s`` closes it."""
        return self.session_class(self, (yield from self._open_session(pool, ttl_s)))

    @operation
    def embed(
        self, texts: str | list[str], pool: str = "retrieval", normalize: bool = True, batch_size: int | None = None
    ) -> Steps[list[list[float]]]:
        """Embeddings from the retrieval pool's ``embed`` op: one vector per text (a str counts as one text)."""
        args = retrieval_args(
            texts=[texts] if isinstance(texts, str) else texts, normalize=normalize, batch_size=batch_size
        )
        return list((yield from self._call(pool, "embed", args)))

    @operation
    def retrieval(self, pool: str = "retrieval", ttl_s: float | None = None) -> Steps[RetrievalT]:
        """Open a session holding a vector index on the retrieval pool: ``with client.retrieval() as index``."""
        return self.retrieval_class(self, (yield from self._open_session(pool, ttl_s)))

    @operation
    def submit(
        self, pool: str, op: str, /, _session: str | None = None, _max_retries: int | None = None, **args: Any
    ) -> Steps[JobT]:
        """Queue ``op`` as a long-running job; returns its handle at once."""
        body = {"pool": pool, "op": op, "args": args, "session": _session, "max_retries": _max_retries}
        request = self.build_request("POST", "v1", "jobs", body=body)
        record = response_field((yield from self._exchange(request, idempotent=False, pool=pool, op=op)))
        return self.job_class(self, dict(record))

    @operation
    def submit_many(
        self,
        pool: str,
        op: str,
        batch: list[dict[str, Any]],
        /,
        _session: str | None = None,
        _max_retries: int | None = None,
    ) -> Steps[list[JobT]]:
        """Queue ``op`` once per arguments in ``batch`` (one request, one commit); their handles, in order. A bad
        argument in any of them refuses the whole batch, naming it (``args[3].n``)."""
        body = {"pool": pool, "op": op, "args": list(batch), "session": _session, "max_retries": _max_retries}
        request = self.build_request("POST", "v1", "jobs", "batch", body=body)
        records = response_field((yield from self._exchange(request, idempotent=False, pool=pool, op=op)), "jobs")
        return [self.job_class(self, dict(record)) for record in records]

    @operation
    def job(self, job_id: str) -> Steps[JobT]:
        """The handle of an existing job (job_not_found if there is none)."""
        return self.job_class(self, dict((yield from self._get("v1", "jobs", job_id))))

    @operation
    def jobs(
        self, pool: str | None = None, status: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Steps[list[dict[str, Any]]]:
        """Jobs, newest first (of one pool, in one status, or all): one page of at most ``limit`` (the gateway's
        default 100), after job ``after`` (the last id of the previous page) when given."""
        given = (("pool", pool), ("status", status), ("limit", limit), ("after", after))
        params = {k: v for k, v in given if v is not None}
        return list((yield from self._get("v1", "jobs", params=params, key="jobs")))

    @operation
    def sessions(
        self, pool: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Steps[list[dict[str, Any]]]:
        """Open sessions, newest first (of one pool, or all): one page of at most ``limit`` (default: all),
        after session ``after`` (the last id of the previous page) when given."""
        params = {k: v for k, v in (("pool", pool), ("limit", limit), ("after", after)) if v is not None}
        return list((yield from self._get("v1", "sessions", params=params, key="sessions")))

    # ------------------------------------------------------------- programs
    @operation
    def register_program(
        self,
        name: str,
        *,
        program: dict[str, Any] | None = None,
        job_id: str | None = None,
        model: str | dict[str, Any] | None = None,
    ) -> Steps[dict[str, Any]]:
        """``POST /v1/programs``: a new version of ``name`` from ``program`` (``{"class", "init", "state"}``) or a
        succeeded optimize job (``job_id``); ``model`` overrides the model it calls. ``{"name", "version", "live"}``."""
        given = {"name": name, "program": program, "job_id": job_id, "model": model}
        request = self.build_request("POST", "v1", "programs", body={k: v for k, v in given.items() if v is not None})
        return dict(response_field((yield from self._exchange(request, idempotent=False))))

    @operation
    def programs(self) -> Steps[list[dict[str, Any]]]:
        """Every registered program: ``{"name", "live", "versions", "latest", "created"}``."""
        return list((yield from self._get("v1", "programs", key="programs")))

    @operation
    def program(self, name: str, states: bool = False) -> Steps[dict[str, Any]]:
        """One program: its versions and the live one (program_not_found if there is none)."""
        return dict((yield from self._get("v1", "programs", name, params={"states": "true"} if states else None)))

    @operation
    def run_program(
        self, name: str, inputs: dict[str, Any], version: int | None = None, trace: bool = False
    ) -> Steps[dict[str, Any]]:
        """Run ``name`` (live, or ``version``) on ``forward``'s ``inputs``: ``{"name", "version", "outputs"}``
        (and ``trace``: each predictor's inputs and outputs)."""
        body = {**inputs, "trace": True} if trace else dict(inputs)
        params = {"version": version} if version is not None else None
        request = self.build_request("POST", "v1", "programs", name, "run", body=body, params=params)
        return dict(response_field((yield from self._exchange(request, idempotent=True))))

    @operation
    def batch_program(
        self, name: str, inputs: list[dict[str, Any]], version: int | None = None
    ) -> Steps[dict[str, Any]]:
        """Run many inputs over the programs pool's actors: ``{"name", "version", "outputs": [...in order]}``."""
        params = {"version": version} if version is not None else None
        request = self.build_request("POST", "v1", "programs", name, "batch", body={"inputs": inputs}, params=params)
        return dict(response_field((yield from self._exchange(request, idempotent=True))))

    @operation
    def stream_program(self, name: str, inputs: dict[str, Any], version: int | None = None) -> Steps[StreamT]:
        """A run as Server-Sent Events: ``{"status", "module"}`` as each module starts; ``.result`` the outputs."""
        params = {"version": version} if version is not None else None
        request = self.build_request(
            "POST", "v1", "programs", name, "run", body=dict(inputs), params=params, accept=EVENT_STREAM
        )
        response = yield from self._exchange(request, idempotent=False, pool="programs", op="run_stream")
        return self.stream_class(self, response, "programs", "run_stream")

    @operation
    def promote_program(self, name: str, version: int) -> Steps[dict[str, Any]]:
        """Make ``version`` live (rollback: promote an older one): ``{"name", "live", "previous"}``."""
        request = self.build_request("POST", "v1", "programs", name, "promote", body={"version": version})
        return dict(response_field((yield from self._exchange(request, idempotent=True))))

    @operation
    def restart_pool(self, name: str) -> Steps[dict[str, Any]]:
        """Start a failed (or stopped) pool again; ``{"restarted": bool, "message": ...}``."""
        request = self.build_request("POST", "v1", "pools", name, "restart", body={})  # admin: JSON
        return dict(response_field((yield from self._exchange(request, idempotent=False, pool=name))))

    @operation
    def shutdown(self) -> Steps[dict[str, Any]]:
        """Ask the server (``orchestrator up``) to drain, checkpoint sessions and stop."""
        request = self.build_request("POST", "v1", "shutdown", body={})  # admin routes take JSON only
        return dict(response_field((yield from self._exchange(request, idempotent=False))))
