"""The Python SDK for the HTTP gateway: ``Client`` and ``AsyncClient``.

    with Client.from_env() as client:  # $ORCHESTRATOR_URL, $ORCHESTRATOR_TOKEN
        client.call("toolbox", "greet", name="ada")
        with client.stream("toolbox", "ticker", n=3) as stream:
            events = list(stream)
        stream.result  # the op's return value
        with client.session("toolbox") as s:
            s.call("incr", by=2)
        client.embed(["a text", "another"])  # the retrieval pool's vectors
        with client.retrieval() as index:  # a session holding a vector index
            index.add(["cats purr", "dogs bark"])
            index.search("kitten", k=1)

``AsyncClient`` has the same methods, each awaited, returning the async twin
of the same object: ``async with await client.stream(...) as stream: async for
event in stream``, ``async with await client.session(pool) as s``, ``aclose()``.

Errors are the classes of ``orchestrator.errors``, rebuilt from the gateway's
``{"error": ...}`` body. ``BaseClient`` holds everything without I/O (requests,
error decoding, SSE parsing, retry rules) as generators of steps ("send this
request", "sleep this long") that each client drives with its own I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from orchestrator.errors import (
    InvalidArguments,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    SessionNotFound,
    Unauthorized,
)
from orchestrator.sse import SSEDecoder

DEFAULT_URL = "http://127.0.0.1:8000"
JSON_TYPE = "application/json"
EVENT_STREAM = "text/event-stream"
USER_AGENT = "orchestrator-client/0.1"
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
# A non-JSON error body (from a proxy, say) still gets the class its status alone names.
STATUS_ERRORS: dict[int, type[OrchestratorError]] = {
    cls.http_status: cls for cls in (Unauthorized, PayloadTooLarge, Overloaded)
}
# Failures before any response, retried for idempotent ops (not read timeouts: the op runs, slowly).
RETRIED_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)

T = TypeVar("T")
Step = httpx.Request | float  # what the I/O half does next: send this request, or sleep this many seconds
Steps = Generator[Step, Any, T]  # sent the response (or thrown the httpx.RequestError) of each request
NO_EVENT: Any = object()
JOB_WAIT_S = 30.0  # one long-poll of GET /v1/jobs/{id}/result
RECONNECT_S = 60.0  # how long a job's event stream keeps reconnecting without getting anything


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


class BaseClient:
    """Everything both clients share, without I/O: requests, error decoding and the retry rules as steps.

    Retries (up to ``retries`` times, waiting ``backoff_delay``): an ``overloaded``
    answer, for any request; a connection failure before any response, only for
    requests that are safe to repeat (GET, DELETE, and ops the pool declares
    ``idempotent``, learnt once per pool from ``GET /v1/pools/{pool}``). A
    stream is never retried once its response has begun.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0, retries: int = 3):
        if url.partition("://")[0] not in ("http", "https"):
            raise ValueError(f"the gateway URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.idempotent_ops: dict[str, set[str]] = {}  # pool -> its idempotent ops

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

    # --------------------------------------------------------------- steps
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

    def _pools(self) -> Steps[list[dict[str, Any]]]:
        pools = yield from self._get("v1", "pools", key="pools")
        return [self._remember(pool) for pool in pools]

    def _pool(self, name: str) -> Steps[dict[str, Any]]:
        return self._remember((yield from self._get("v1", "pools", name, pool=name)), name)

    def _open_session(self, pool: str, ttl_s: float | None) -> Steps[dict[str, Any]]:
        request = self.build_request("POST", "v1", "sessions", body={"pool": pool, "ttl_s": ttl_s})
        record = response_field((yield from self._exchange(request, idempotent=False, pool=pool)))
        if not isinstance(record, dict) or "id" not in record:
            raise OrchestratorError(f"the gateway opened a session without an id: {record!r:.200}", pool=pool)
        return {**record, "pool": record.get("pool") or pool}

    def _close_session(self, session_id: str) -> Steps[None]:
        with contextlib.suppress(SessionNotFound):  # already closed or expired: closing is idempotent
            yield from self._exchange(self.build_request("DELETE", "v1", "sessions", session_id), idempotent=True)

    def _submit(
        self, pool: str, op: str, args: dict[str, Any], session: str | None, max_retries: int | None
    ) -> Steps[dict[str, Any]]:
        body = {"pool": pool, "op": op, "args": args, "session": session, "max_retries": max_retries}
        request = self.build_request("POST", "v1", "jobs", body=body)
        return dict(response_field((yield from self._exchange(request, idempotent=False, pool=pool, op=op))))

    def _job(self, job_id: str) -> Steps[dict[str, Any]]:
        return dict((yield from self._get("v1", "jobs", job_id)))

    def _jobs(self, pool: str | None, status: str | None) -> Steps[list[dict[str, Any]]]:
        params = {k: v for k, v in (("pool", pool), ("status", status)) if v}
        return list((yield from self._get("v1", "jobs", params=params, key="jobs")))

    def _cancel_job(self, job_id: str) -> Steps[dict[str, Any]]:
        request = self.build_request("POST", "v1", "jobs", job_id, "cancel")
        return dict(response_field((yield from self._exchange(request, idempotent=True))))

    def _job_result(self, job_id: str, timeout: float | None) -> Steps[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = JOB_WAIT_S if deadline is None else max(0.0, min(JOB_WAIT_S, deadline - time.monotonic()))
            request = self.build_request("GET", "v1", "jobs", job_id, "result", params={"timeout": left})
            try:
                return response_field((yield from self._exchange(request, idempotent=True)), "result")
            except OrchestratorError as exc:  # still running: wait again, until our own deadline
                if exc.code != "timeout" or (deadline is not None and time.monotonic() >= deadline):
                    raise

    def _shutdown(self) -> Steps[Any]:
        return response_field(
            (yield from self._exchange(self.build_request("POST", "v1", "shutdown"), idempotent=False))
        )

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

    def _embed(self, texts: str | list[str], pool: str, normalize: bool, batch_size: int | None) -> Steps[Any]:
        texts = [texts] if isinstance(texts, str) else texts
        return (
            yield from self._call(
                pool, "embed", retrieval_args(texts=texts, normalize=normalize, batch_size=batch_size)
            )
        )


def retrieval_args(**args: Any) -> dict[str, Any]:
    """A retrieval op's arguments, leaving out those not given (None) so the worker's defaults apply."""
    return {name: value for name, value in args.items() if value is not None}


class BaseStream:
    """The events of one streaming op, decoded from Server-Sent Events (without I/O).

    After the last event, ``result`` holds the op's return value; an ``error``
    event raises its OrchestratorError after the events before it.
    """

    def __init__(self, response: httpx.Response, pool: str, op: str) -> None:
        self.response, self.pool, self.op = response, pool, op
        self.result: Any = None
        self.done = False
        self.events = 0
        self.decoder = SSEDecoder()
        if not is_event_stream(response):  # a plain JSON answer (already read): a result, no events
            self.done = True
            self.result = response_field(response, "result")

    def _on_line(self, line: str | None) -> Any:
        """The event this line completes, else NO_EVENT; sets ``result`` or raises at the stream's end."""
        if line is None:
            self.done = True
            raise OrchestratorError("the gateway closed the stream before its result", pool=self.pool, op=self.op)
        message = self.decoder.decode(line)
        if message is None or message.event not in ("event", "result", "error"):
            return NO_EVENT  # unknown event types are skipped, so the gateway can add some
        try:
            data = json.loads(message.data)
        except ValueError:
            data = NO_EVENT
        if message.event == "event" and data is not NO_EVENT:
            self.events += 1
            return data
        self.done = True
        if not isinstance(data, dict) or not isinstance(data.get("error", {}), dict) or message.event not in data:
            raise OrchestratorError(f"the gateway sent a malformed {message.event!r} event: {message.data[:200]}")
        if message.event == "error":
            raise OrchestratorError.from_dict(data["error"])
        self.result = data["result"]
        return NO_EVENT

    def _broken(self, exc: httpx.RequestError) -> OrchestratorError:
        self.done = True
        message = f"lost the gateway's stream after {self.events} events: {type(exc).__name__}: {exc}"
        return OrchestratorError(message, pool=self.pool, op=self.op)


class BaseSession:
    """An open session's record: ``id``, ``pool``, ``slot``, ``ttl_s``."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.id: str = record["id"]
        self.pool: str = record["pool"]
        self.slot: int | None = record.get("slot")
        self.ttl_s: float | None = record.get("ttl_s")
        self.closed = False


# ------------------------------------------------------------------ sync I/O
class Client(BaseClient):
    """A synchronous client of the gateway; close it, or use ``with``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 3,
    ) -> None:
        super().__init__(url, token, timeout, retries)
        self.http = httpx.Client(transport=transport)

    def _run(self, steps: Steps[T]) -> T:
        """Drive steps: send each request (a 2xx event stream is left open), sleep each delay."""
        reply: httpx.Response | None = None
        error: httpx.RequestError | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if not isinstance(step, httpx.Request):
                time.sleep(step)
                continue
            try:
                reply = self.http.send(step, stream=True)
                if not is_event_stream(reply):
                    reply.read()
            except BaseException as exc:  # never leave a half-read response open
                if reply is not None:
                    reply.close()
                if not isinstance(exc, httpx.RequestError):
                    raise
                reply, error = None, exc

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}``."""
        return self._run(self._get("healthz"))

    def pools(self) -> list[dict[str, Any]]:
        """Every pool's status: state, actors, sessions, ops, counters, recent events."""
        return self._run(self._pools())

    def pool(self, name: str) -> dict[str, Any]:
        """One pool's status (PoolNotFound if there is none of that name)."""
        return self._run(self._pool(name))

    def call(self, pool: str, op: str, /, **args: Any) -> Any:
        """Run ``op`` on ``pool`` with keyword arguments ``args``; returns its result."""
        return self._run(self._call(pool, op, args))

    def stream(self, pool: str, op: str, /, **args: Any) -> ClientStream:
        """Start a streaming op; iterate the returned stream for its events, then read ``.result``."""
        return ClientStream(self._run(self._op(pool, op, args, None, accept=EVENT_STREAM)), pool, op)

    def session(self, pool: str, ttl_s: float | None = None) -> ClientSession:
        """Open a session pinned to one actor of ``pool`` (a context manager that closes it)."""
        return ClientSession(self, self._run(self._open_session(pool, ttl_s)))

    def embed(
        self, texts: str | list[str], pool: str = "retrieval", normalize: bool = True, batch_size: int | None = None
    ) -> list[list[float]]:
        """Embeddings from the retrieval pool's ``embed`` op: one vector per text (a str counts as one text)."""
        return list(self._run(self._embed(texts, pool, normalize, batch_size)))

    def retrieval(self, pool: str = "retrieval", ttl_s: float | None = None) -> RetrievalSession:
        """Open a session holding a vector index on the retrieval pool (a context manager that closes it)."""
        return RetrievalSession(self, self._run(self._open_session(pool, ttl_s)))

    def submit(
        self, pool: str, op: str, /, _session: str | None = None, _max_retries: int | None = None, **args: Any
    ) -> ClientJob:
        """Queue ``op`` as a long-running job; returns its handle at once."""
        return ClientJob(self, self._run(self._submit(pool, op, args, _session, _max_retries)))

    def job(self, job_id: str) -> ClientJob:
        """The handle of an existing job (job_not_found if there is none)."""
        return ClientJob(self, self._run(self._job(job_id)))

    def jobs(self, pool: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return self._run(self._jobs(pool, status))

    def sessions(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Open sessions (of one pool, or all)."""
        return self._run(self._get("v1", "sessions", params={"pool": pool} if pool else None, key="sessions"))

    def shutdown(self) -> dict[str, Any]:
        """Ask the server (``orchestrator up``) to drain, checkpoint sessions and stop."""
        return dict(self._run(self._shutdown()))

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientStream(BaseStream):
    """An iterator of a streaming op's events; ``close()`` (or leaving ``with``) stops reading early."""

    def __init__(self, response: httpx.Response, pool: str, op: str) -> None:
        super().__init__(response, pool, op)
        self.lines: Iterator[str] = response.iter_lines()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Any:
        try:
            while not self.done:
                try:
                    line = next(self.lines, None)
                except httpx.RequestError as exc:
                    raise self._broken(exc) from exc
                event = self._on_line(line)
                if event is not NO_EVENT:
                    return event
        finally:
            if self.done:
                self.response.close()
        raise StopIteration

    def close(self) -> None:
        """Stop reading; the gateway sees the disconnect."""
        self.done = True
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientSession(BaseSession):
    """A session pinned to one actor; its calls run in order. Close it, or use ``with``."""

    def __init__(self, client: Client, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.client = client

    def call(self, op: str, /, **args: Any) -> Any:
        """Run ``op`` with this session's state."""
        return self.client._run(self.client._call(self.pool, op, args, self.id))

    def stream(self, op: str, /, **args: Any) -> ClientStream:
        """Stream a streaming op's events with this session's state."""
        response = self.client._run(self.client._op(self.pool, op, args, self.id, accept=EVENT_STREAM))
        return ClientStream(response, self.pool, op)

    def close(self) -> None:
        """Close the session (idempotent; an expired session counts as closed)."""
        if not self.closed:
            self.closed = True
            self.client._run(self.client._close_session(self.id))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------- async I/O
class AsyncClient(BaseClient):
    """An asyncio client: the same methods as ``Client``, awaited; ``aclose()``, or ``async with``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 3,
    ) -> None:
        super().__init__(url, token, timeout, retries)
        self.http = httpx.AsyncClient(transport=transport)

    async def _run(self, steps: Steps[T]) -> T:
        """Drive steps: send each request (a 2xx event stream is left open), sleep each delay."""
        reply: httpx.Response | None = None
        error: httpx.RequestError | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if not isinstance(step, httpx.Request):
                await asyncio.sleep(step)
                continue
            try:
                reply = await self.http.send(step, stream=True)
                if not is_event_stream(reply):
                    await reply.aread()
            except BaseException as exc:  # never leave a half-read response open
                if reply is not None:
                    await reply.aclose()
                if not isinstance(exc, httpx.RequestError):
                    raise
                reply, error = None, exc

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}``."""
        return await self._run(self._get("healthz"))

    async def pools(self) -> list[dict[str, Any]]:
        """Every pool's status: state, actors, sessions, ops, counters, recent events."""
        return await self._run(self._pools())

    async def pool(self, name: str) -> dict[str, Any]:
        """One pool's status (PoolNotFound if there is none of that name)."""
        return await self._run(self._pool(name))

    async def call(self, pool: str, op: str, /, **args: Any) -> Any:
        """Run ``op`` on ``pool`` with keyword arguments ``args``; returns its result."""
        return await self._run(self._call(pool, op, args))

    async def stream(self, pool: str, op: str, /, **args: Any) -> AsyncClientStream:
        """Start a streaming op: ``async with await client.stream(...) as s: async for event in s``."""
        return AsyncClientStream(await self._run(self._op(pool, op, args, None, accept=EVENT_STREAM)), pool, op)

    async def session(self, pool: str, ttl_s: float | None = None) -> AsyncClientSession:
        """Open a session pinned to one actor: ``async with await client.session(pool) as s``."""
        return AsyncClientSession(self, await self._run(self._open_session(pool, ttl_s)))

    async def embed(
        self, texts: str | list[str], pool: str = "retrieval", normalize: bool = True, batch_size: int | None = None
    ) -> list[list[float]]:
        """Embeddings from the retrieval pool's ``embed`` op: one vector per text (a str counts as one text)."""
        return list(await self._run(self._embed(texts, pool, normalize, batch_size)))

    async def retrieval(self, pool: str = "retrieval", ttl_s: float | None = None) -> AsyncRetrievalSession:
        """Open a session holding a vector index: ``async with await client.retrieval() as index``."""
        return AsyncRetrievalSession(self, await self._run(self._open_session(pool, ttl_s)))

    async def submit(
        self, pool: str, op: str, /, _session: str | None = None, _max_retries: int | None = None, **args: Any
    ) -> AsyncClientJob:
        """Queue ``op`` as a long-running job; returns its handle at once."""
        return AsyncClientJob(self, await self._run(self._submit(pool, op, args, _session, _max_retries)))

    async def job(self, job_id: str) -> AsyncClientJob:
        """The handle of an existing job (job_not_found if there is none)."""
        return AsyncClientJob(self, await self._run(self._job(job_id)))

    async def jobs(self, pool: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return await self._run(self._jobs(pool, status))

    async def sessions(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Open sessions (of one pool, or all)."""
        return await self._run(self._get("v1", "sessions", params={"pool": pool} if pool else None, key="sessions"))

    async def shutdown(self) -> dict[str, Any]:
        """Ask the server (``orchestrator up``) to drain, checkpoint sessions and stop."""
        return dict(await self._run(self._shutdown()))

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClientStream(BaseStream):
    """An async iterator of a streaming op's events; ``aclose()`` (or leaving ``async with``) stops early."""

    def __init__(self, response: httpx.Response, pool: str, op: str) -> None:
        super().__init__(response, pool, op)
        self.lines: AsyncIterator[str] = response.aiter_lines()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            while not self.done:
                try:
                    line = await anext(self.lines, None)
                except httpx.RequestError as exc:
                    raise self._broken(exc) from exc
                event = self._on_line(line)
                if event is not NO_EVENT:
                    return event
        finally:
            if self.done:
                await self.response.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading; the gateway sees the disconnect."""
        self.done = True
        await self.response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClientSession(BaseSession):
    """A session pinned to one actor, for asyncio; ``aclose()`` it, or use ``async with``."""

    def __init__(self, client: AsyncClient, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.client = client

    async def call(self, op: str, /, **args: Any) -> Any:
        """Run ``op`` with this session's state."""
        return await self.client._run(self.client._call(self.pool, op, args, self.id))

    async def stream(self, op: str, /, **args: Any) -> AsyncClientStream:
        """Stream a streaming op's events with this session's state."""
        response = await self.client._run(self.client._op(self.pool, op, args, self.id, accept=EVENT_STREAM))
        return AsyncClientStream(response, self.pool, op)

    async def aclose(self) -> None:
        """Close the session (idempotent; an expired session counts as closed)."""
        if not self.closed:
            self.closed = True
            await self.client._run(self.client._close_session(self.id))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ------------------------------------------------------------ retrieval sessions
class RetrievalSession(ClientSession):
    """A retrieval-pool session: its vector index, through ``add``/``search``/``delete``/``size``/``save``/``load``."""

    def add(
        self,
        docs: list[str] | None = None,
        ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
        vectors: list[list[float]] | None = None,
    ) -> dict[str, Any]:
        """Add documents (or precomputed vectors); returns ``{"ids", "size"}``."""
        return dict(self.call("add", **retrieval_args(docs=docs, ids=ids, metadata=metadata, vectors=vectors)))

    def search(
        self,
        query: str | None = None,
        *,
        queries: list[str] | None = None,
        vectors: list[list[float]] | None = None,
        k: int = 10,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hits for ``query`` (``ids``, ``scores``, ``docs``, ``metadata``), or ``results`` for several."""
        args = retrieval_args(query=query, queries=queries, vectors=vectors, k=k, filter=filter)
        return dict(self.call("search", **args))

    def delete(self, ids: list[str]) -> dict[str, int]:
        """Remove documents by id (unknown ids: InvalidArguments, nothing removed)."""
        return dict(self.call("delete", ids=ids))

    def size(self) -> int:
        """Documents in the index."""
        return int(self.call("size"))

    def save(self, path: str) -> dict[str, Any]:
        """Save the index under the pool's ``data_dir``."""
        return dict(self.call("save", path=path))

    def load(self, path: str) -> dict[str, Any]:
        """Replace the index with one saved under the pool's ``data_dir``."""
        return dict(self.call("load", path=path))


class AsyncRetrievalSession(AsyncClientSession):
    """``RetrievalSession`` for asyncio: the same methods, awaited."""

    async def add(
        self,
        docs: list[str] | None = None,
        ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
        vectors: list[list[float]] | None = None,
    ) -> dict[str, Any]:
        """Add documents (or precomputed vectors); returns ``{"ids", "size"}``."""
        return dict(await self.call("add", **retrieval_args(docs=docs, ids=ids, metadata=metadata, vectors=vectors)))

    async def search(
        self,
        query: str | None = None,
        *,
        queries: list[str] | None = None,
        vectors: list[list[float]] | None = None,
        k: int = 10,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hits for ``query`` (``ids``, ``scores``, ``docs``, ``metadata``), or ``results`` for several."""
        args = retrieval_args(query=query, queries=queries, vectors=vectors, k=k, filter=filter)
        return dict(await self.call("search", **args))

    async def delete(self, ids: list[str]) -> dict[str, int]:
        """Remove documents by id (unknown ids: InvalidArguments, nothing removed)."""
        return dict(await self.call("delete", ids=ids))

    async def size(self) -> int:
        """Documents in the index."""
        return int(await self.call("size"))

    async def save(self, path: str) -> dict[str, Any]:
        """Save the index under the pool's ``data_dir``."""
        return dict(await self.call("save", path=path))

    async def load(self, path: str) -> dict[str, Any]:
        """Replace the index with one saved under the pool's ``data_dir``."""
        return dict(await self.call("load", path=path))


class BaseJob:
    """A job handle without I/O: the event-stream request (resuming after the last seen id) and its parsing."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.id: str = record["id"]
        self.record = record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _events_request(self, client: BaseClient, after: int, follow: bool) -> httpx.Request:
        params = {"follow": "true" if follow else "false"}
        request = client.build_request("GET", "v1", "jobs", self.id, "events", params=params, accept=EVENT_STREAM)
        request.headers["Last-Event-ID"] = str(after)
        return request

    @staticmethod
    def _parse(decoder: SSEDecoder, line: str) -> tuple[str, int, Any] | None:
        """``("event", seq, data)``, ``("end", seq, status)`` or None for a line that completes nothing."""
        message = decoder.decode(line)
        if message is None or message.event not in ("event", "end"):
            return None
        data = json.loads(message.data)
        seq = int(message.id or 0)
        return ("end", seq, data.get("status")) if message.event == "end" else ("event", seq, data)


class ClientJob(BaseJob):
    """A job over HTTP: ``status()``, ``events()`` (reconnects by itself), ``result(timeout)``, ``cancel()``."""

    def __init__(self, client: Client, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.client = client

    def status(self) -> dict[str, Any]:
        """The job's record (status, attempts, events logged, result or error)."""
        self.record = self.client._run(self.client._job(self.id))
        return self.record

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job: its result, or its error raised (``timeout`` if not done in time)."""
        return self.client._run(self.client._job_result(self.id, timeout))

    def cancel(self) -> dict[str, Any]:
        """Cancel (a finished job answers with ``cancelled: false``)."""
        return self.client._run(self.client._cancel_job(self.id))

    def events(self, after: int = 0, follow: bool = True) -> Iterator[tuple[int, Any]]:
        """``(seq, event)`` from the log; after a dropped connection it reconnects from the last seq."""
        patience = time.monotonic() + RECONNECT_S
        attempt = 0
        while True:
            decoder = SSEDecoder()
            try:
                request = self._events_request(self.client, after, follow)
                with self.client.http.stream(
                    "GET", request.url, headers=request.headers, timeout=self.client.timeout
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise decode_error(response.status_code, response.content)
                    for line in response.iter_lines():
                        parsed = self._parse(decoder, line)
                        if parsed is None:
                            continue
                        kind, seq, data = parsed
                        if kind == "end":
                            return
                        after, attempt, patience = seq, 0, time.monotonic() + RECONNECT_S
                        yield seq, data
            except httpx.TransportError:
                if time.monotonic() > patience:
                    raise OrchestratorError(f"lost the event stream of job {self.id} and could not reconnect") from None
            time.sleep(backoff_delay(attempt))
            attempt += 1


class AsyncClientJob(BaseJob):
    """``ClientJob`` for asyncio: the same methods, awaited; ``events()`` is an async iterator."""

    def __init__(self, client: AsyncClient, record: dict[str, Any]) -> None:
        super().__init__(record)
        self.client = client

    async def status(self) -> dict[str, Any]:
        """The job's record."""
        self.record = await self.client._run(self.client._job(self.id))
        return self.record

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job: its result, or its error raised."""
        return await self.client._run(self.client._job_result(self.id, timeout))

    async def cancel(self) -> dict[str, Any]:
        """Cancel (a finished job answers with ``cancelled: false``)."""
        return await self.client._run(self.client._cancel_job(self.id))

    async def events(self, after: int = 0, follow: bool = True) -> AsyncIterator[tuple[int, Any]]:
        """``(seq, event)`` from the log, reconnecting from the last seq after a dropped connection."""
        patience = time.monotonic() + RECONNECT_S
        attempt = 0
        while True:
            decoder = SSEDecoder()
            request = self._events_request(self.client, after, follow)
            try:
                async with self.client.http.stream(
                    "GET", request.url, headers=request.headers, timeout=self.client.timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise decode_error(response.status_code, response.content)
                    async for line in response.aiter_lines():
                        parsed = self._parse(decoder, line)
                        if parsed is None:
                            continue
                        kind, seq, data = parsed
                        if kind == "end":
                            return
                        after, attempt, patience = seq, 0, time.monotonic() + RECONNECT_S
                        yield seq, data
            except httpx.TransportError:
                if time.monotonic() > patience:
                    raise OrchestratorError(f"lost the event stream of job {self.id} and could not reconnect") from None
            await asyncio.sleep(backoff_delay(attempt))
            attempt += 1
