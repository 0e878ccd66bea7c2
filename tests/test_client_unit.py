"""The HTTP SDK without a server: SSE parsing, error decoding, retry rules, request building,
and both clients over ``httpx.MockTransport`` (a scripted gateway)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import orchestrator
import orchestrator.client
from orchestrator.client import AsyncClient, Client
from orchestrator.client.core import EVENT_STREAM, backoff_delay, decode_error
from orchestrator.client.steps import Steps
from orchestrator.errors import (
    ERROR_CLASSES,
    InvalidArguments,
    OpFailed,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    PoolNotFound,
    PoolUnavailable,
    Unauthorized,
)
from orchestrator.gateway.jsonbody import sse_message
from orchestrator.sse import ServerSentEvent, SSEDecoder

URL = "http://gw.test:8000"
POOL = {
    "name": "toolbox",
    "ops": {
        "greet": {"name": "greet", "idempotent": False},
        "lookup": {"name": "lookup", "idempotent": True},
        "ticker": {"name": "ticker", "stream": True, "idempotent": False},
    },
}


def error_body(code: str, message: str = "boom", **fields: Any) -> dict[str, Any]:
    """The gateway's error body for ``code``."""
    return {"error": {"code": code, "message": message, "pool": "toolbox", "op": None, "detail": None, **fields}}


def sse(*messages: tuple[str, Any]) -> bytes:
    """An SSE body: one message per (event, data), numbered from 1, with a keep-alive comment first."""
    lines = [": keep-alive\n\n"]
    for i, (event, data) in enumerate(messages, start=1):
        lines.append(f"id: {i}\nevent: {event}\ndata: {json.dumps(data)}\n\n")
    return "".join(lines).encode()


def sse_response(body: bytes) -> httpx.Response:
    """A 200 Server-Sent Events response."""
    return httpx.Response(200, headers={"content-type": EVENT_STREAM}, content=body)


class FakeGateway:
    """Answers by (method, path) from scripted lists (the last answer repeats) and logs every request.

    ``GET /v1/pools/toolbox`` answers POOL unless scripted; an answer may be an exception to raise.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, list[httpx.Response | Exception]] = {}
        self.requests: list[httpx.Request] = []

    def script(self, method: str, path: str, *answers: httpx.Response | Exception) -> None:
        """Set the answers to ``method path``."""
        self.scripts[f"{method} {path}"] = list(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler."""
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        if key not in self.scripts and key == "GET /v1/pools/toolbox":
            return httpx.Response(200, json=POOL)
        answers = self.scripts.get(key)
        if answers is None:
            return httpx.Response(404, json=error_body("internal", f"unscripted {key}"))
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def paths(self, method: str | None = None) -> list[str]:
        """``METHOD /path`` of every request so far (of one method, or all)."""
        return [f"{r.method} {r.url.path}" for r in self.requests if method in (None, r.method)]

    def client(self, **options: Any) -> Client:
        """A sync client on this gateway."""
        return Client(URL, token="s3cret", transport=httpx.MockTransport(self.handle), **options)

    def async_client(self, **options: Any) -> AsyncClient:
        """An async client on this gateway."""
        return AsyncClient(URL, token="s3cret", transport=httpx.MockTransport(self.handle), **options)


def drive(
    steps: Steps[Any], outcomes: list[httpx.Response | Exception]
) -> tuple[Any, list[httpx.Request], list[float]]:
    """Run steps by hand: answer each request with the next outcome; returns (value, requests, delays)."""
    requests: list[httpx.Request] = []
    delays: list[float] = []
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value, requests, delays
        reply, error = None, None
        if isinstance(step, httpx.Request):
            requests.append(step)
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                error = outcome
            else:
                reply = outcome
        else:
            delays.append(step)


def overloaded(retry_after: str | None = None) -> httpx.Response:
    """A 429 answer, with Retry-After when given."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(429, json=error_body("overloaded", "queue full", retryable=True), headers=headers)


# ---------------------------------------------------------------- SSE parsing
def decode_all(lines: list[str]) -> list[ServerSentEvent]:
    """Every message a decoder completes from ``lines``."""
    decoder = SSEDecoder()
    return [message for line in lines if (message := decoder.decode(line)) is not None]


def test_sse_joins_data_lines_skips_comments_and_keeps_ids() -> None:
    lines = [": keep-alive", "", "id: 1", "event: event", 'data: {"a":', "data:  1}", "", ":ping"]
    lines += ["id: 2", "event: result", 'data: {"result": 3}', ""]
    assert decode_all(lines) == [
        ServerSentEvent("event", '{"a":\n 1}', "1"),  # one leading space is stripped, the second kept
        ServerSentEvent("result", '{"result": 3}', "2"),
    ]
    assert json.loads(decode_all(lines)[0].data) == {"a": 1}


def test_sse_spec_edge_cases() -> None:
    lines = ["id: 7", "data", ""]  # a field without a colon has an empty value
    lines += ["event: orphan", ""]  # no data: not dispatched, and the name does not leak into the next message
    lines += ["retry: 10", "unknown: x", "data: plain", ""]  # ignored fields; unnamed message
    lines += ["id: bad\0id", "event: result", "data: {}", ""]  # an id with NUL is ignored
    assert decode_all(lines) == [
        ServerSentEvent("message", "", "7"),
        ServerSentEvent("message", "plain", "7"),  # the last id carries over
        ServerSentEvent("result", "{}", "7"),
    ]


def test_sse_incomplete_message_is_not_dispatched() -> None:
    assert decode_all(["id: 1", "event: event", "data: {}"]) == []


# ----------------------------------------------------------- error decoding
@pytest.mark.parametrize("code", sorted(ERROR_CLASSES))
def test_error_body_decodes_to_its_class(code: str) -> None:
    cls = ERROR_CLASSES[code]
    body = error_body(code, "went wrong", op="greet", retryable=True, detail=[{"field": "x"}])
    error = decode_error(cls.http_status, json.dumps(body).encode())
    assert type(error) is cls
    assert (error.code, error.message, error.pool, error.op) == (code, "went wrong", "toolbox", "greet")
    assert error.retryable is True and error.detail == [{"field": "x"}]


@pytest.mark.parametrize(
    ("status", "cls"), [(401, Unauthorized), (413, PayloadTooLarge), (429, Overloaded), (502, OrchestratorError)]
)
def test_non_json_error_gets_class_from_status_and_text_in_message(status: int, cls: type[OrchestratorError]) -> None:
    error = decode_error(status, b"<html>proxy says no</html>", pool="toolbox", op="greet")
    assert type(error) is cls
    assert "proxy says no" in error.message and str(status) in error.message
    assert (error.pool, error.op) == ("toolbox", "greet")


def test_json_error_without_error_field_is_internal() -> None:
    error = decode_error(404, b'{"detail": "Not Found"}')
    assert type(error) is OrchestratorError and error.code == "internal"
    assert "Not Found" in error.message
    assert "(empty body)" in decode_error(500, b"").message


# ------------------------------------------------------------ retry schedule
def test_backoff_doubles_from_100ms_and_caps_at_2s() -> None:
    assert [backoff_delay(attempt) for attempt in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff_delay(10_000) == 2.0


def test_backoff_honours_retry_after_seconds_only() -> None:
    assert backoff_delay(0, "3") == 3.0
    assert backoff_delay(4, "0") == 0.0
    assert backoff_delay(0, "1.5") == 1.5
    for bad in ("soon", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "inf", "nan", ""):
        assert backoff_delay(1, bad) == pytest.approx(0.2), bad


def test_overloaded_is_retried_with_backoff_and_retry_after() -> None:
    client = Client(URL)
    request = client.build_request("POST", "v1", "pools", "toolbox", "ops", "greet", body={})
    ok = httpx.Response(200, json={"result": 1})
    value, requests, delays = drive(client._exchange(request, idempotent=False), [overloaded(), overloaded("5"), ok])
    assert value is ok and len(requests) == 3
    assert delays == pytest.approx([0.1, 5.0])  # the first waits the backoff, the second Retry-After


def test_overloaded_gives_up_after_retries() -> None:
    client = Client(URL, retries=2)
    request = client.build_request("GET", "v1", "pools")
    with pytest.raises(Overloaded) as raised:
        drive(client._exchange(request, idempotent=True), [overloaded(), overloaded(), overloaded()])
    assert raised.value.retryable


@pytest.mark.parametrize("idempotent", [True, False])
def test_connection_error_is_retried_only_when_idempotent(idempotent: bool) -> None:
    client = Client(URL)
    request = client.build_request("POST", "v1", "pools", "toolbox", "ops", "op", body={})
    outcomes: list[Any] = [httpx.ConnectError("refused"), httpx.Response(200, json={"result": 1})]
    if idempotent:
        value, requests, _ = drive(client._exchange(request, idempotent=True), outcomes)
        assert value.json() == {"result": 1} and len(requests) == 2
        return
    with pytest.raises(OrchestratorError) as raised:
        drive(client._exchange(request, idempotent=False), outcomes)
    assert type(raised.value) is OrchestratorError and raised.value.code == "internal"
    assert raised.value.retryable and f"cannot reach the gateway at {URL}" in raised.value.message
    assert len(outcomes) == 1  # one request only


@pytest.mark.parametrize(
    "outcome",
    [
        httpx.ReadTimeout("slow"),  # the op may be running: never repeated
        httpx.Response(503, json=error_body("pool_unavailable", retryable=True)),  # retryable, but not ours to retry
    ],
)
def test_other_failures_are_not_retried(outcome: Any) -> None:
    client = Client(URL)
    request = client.build_request("GET", "v1", "pools")
    outcomes = [outcome, httpx.Response(200, json={"pools": []})]
    with pytest.raises(OrchestratorError):
        drive(client._exchange(request, idempotent=True), outcomes)
    assert len(outcomes) == 1


def test_no_retries_when_retries_is_zero() -> None:
    client = Client(URL, retries=0)
    request = client.build_request("GET", "v1", "pools")
    with pytest.raises(Overloaded):
        drive(client._exchange(request, idempotent=True), [overloaded("0"), httpx.Response(200, json={})])


# ------------------------------------------------------------ request building
def test_request_has_url_segments_auth_json_and_timeout() -> None:
    client = Client("http://gw.test:9/base/", token="s3cret", timeout=7.5)
    request = client.build_request("POST", "v1", "pools", "a b/c", "ops", "x", body={"k": [1]}, accept=EVENT_STREAM)
    assert str(request.url) == "http://gw.test:9/base/v1/pools/a%20b%2Fc/ops/x"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["accept"] == EVENT_STREAM
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"k": [1]}
    assert request.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}
    assert "s3cret" not in repr(client)


def test_request_without_token_or_body() -> None:
    request = Client(URL).build_request("GET", "v1", "sessions", params={"pool": "toolbox"})
    assert "authorization" not in request.headers and request.content == b""
    assert request.headers["accept"] == "application/json"
    assert request.url.params["pool"] == "toolbox" and request.url.path == "/v1/sessions"


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http://"):
        Client("127.0.0.1:8000")


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_from_env(monkeypatch: pytest.MonkeyPatch, cls: type[Client] | type[AsyncClient]) -> None:
    monkeypatch.setenv("ORCHESTRATOR_URL", "https://orch.example:443/")
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "tok")
    client = cls.from_env(retries=7)
    assert isinstance(client, cls)
    assert (client.url, client.token, client.retries) == ("https://orch.example:443", "tok", 7)
    monkeypatch.delenv("ORCHESTRATOR_URL")
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "")
    client = cls.from_env()
    assert (client.url, client.token) == ("http://127.0.0.1:8000", None)


def test_package_exports_the_clients() -> None:
    assert {"Client", "AsyncClient"} <= set(orchestrator.__all__)
    assert orchestrator.Client is Client and orchestrator.AsyncClient is AsyncClient


def test_sdk_exports_its_clients_handles_and_errors() -> None:
    handles = {"Stream", "Session", "RetrievalSession", "Job"}
    errors = {cls.__name__ for cls in ERROR_CLASSES.values()} | {"OrchestratorError"}
    exported = set(orchestrator.client.__all__)
    assert {"Client", "AsyncClient"} | handles | {f"Async{name}" for name in handles} | errors <= exported
    assert all(getattr(orchestrator.client, name) is getattr(orchestrator, name) for name in errors)
    assert orchestrator.client.Client is Client and orchestrator.client.AsyncClient is AsyncClient


def test_arguments_that_are_not_json_are_invalid_before_sending() -> None:
    gateway = FakeGateway()
    with gateway.client(retries=0) as client, pytest.raises(InvalidArguments, match="JSON"):
        client.call("toolbox", "greet", name=object())
    assert gateway.requests == []


# ------------------------------------------------------------ sync client I/O
def test_call_retries_overloaded_then_returns_result() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/pools/toolbox/ops/greet", overloaded("0"), httpx.Response(200, json={"result": "hi"}))
    with gateway.client() as client:
        assert client.call("toolbox", "greet", name="ada") == "hi"
    posts = [r for r in gateway.requests if r.method == "POST"]
    assert len(posts) == 2 and all(json.loads(r.content) == {"name": "ada"} for r in posts)
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in gateway.requests)


def test_connection_error_retried_for_idempotent_op_only() -> None:
    gateway = FakeGateway()
    ok = httpx.Response(200, json={"result": 42})
    gateway.script("POST", "/v1/pools/toolbox/ops/lookup", httpx.ConnectError("refused"), ok)
    gateway.script("POST", "/v1/pools/toolbox/ops/greet", httpx.ConnectError("refused"), ok)
    with gateway.client() as client:
        assert client.call("toolbox", "lookup", key="k") == 42
        with pytest.raises(OrchestratorError, match="cannot reach the gateway"):
            client.call("toolbox", "greet")
    assert gateway.paths() == [
        "GET /v1/pools/toolbox",  # fetched once, then cached
        "POST /v1/pools/toolbox/ops/lookup",
        "POST /v1/pools/toolbox/ops/lookup",
        "POST /v1/pools/toolbox/ops/greet",
    ]


def test_error_bodies_raise_their_class() -> None:
    gateway = FakeGateway()
    gateway.script("GET", "/v1/pools/nope", httpx.Response(404, json=error_body("pool_not_found", pool="nope")))
    with gateway.client() as client, pytest.raises(PoolNotFound) as raised:
        client.call("nope", "greet")
    assert raised.value.pool == "nope"
    assert gateway.paths("POST") == []


def test_status_listing_endpoints() -> None:
    gateway = FakeGateway()
    gateway.script("GET", "/healthz", httpx.Response(200, json={"status": "ok"}))
    gateway.script("GET", "/v1/pools", httpx.Response(200, json={"pools": [POOL]}))
    gateway.script("GET", "/v1/sessions", httpx.Response(200, json={"sessions": [{"id": "s1"}]}))
    with gateway.client() as client:
        assert client.health() == {"status": "ok"}
        assert [p["name"] for p in client.pools()] == ["toolbox"]
        assert client.sessions("toolbox") == [{"id": "s1"}]
        assert client.pool("toolbox")["ops"]["lookup"]["idempotent"] is True
    assert gateway.requests[2].url.params["pool"] == "toolbox"
    assert client.idempotent_ops == {"toolbox": {"lookup"}}


def test_stream_yields_events_then_result() -> None:
    gateway = FakeGateway()
    body = sse(("event", {"i": 0}), ("event", {"i": 1}), ("result", {"result": 3}))
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", overloaded("0"), sse_response(body))
    with gateway.client() as client, client.stream("toolbox", "ticker", n=2) as stream:
        assert list(stream) == [{"i": 0}, {"i": 1}]
        assert stream.result == 3 and stream.events == 2
    assert gateway.requests[-1].headers["accept"] == EVENT_STREAM
    assert len(gateway.paths("POST")) == 2  # the overloaded open was retried: no event had come yet


def test_stream_raises_error_event_after_the_events_before_it() -> None:
    gateway = FakeGateway()
    body = sse(("event", {"i": 0}), ("error", error_body("op_failed", "ValueError: bad", op="ticker")))
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", sse_response(body))
    seen: list[Any] = []
    with gateway.client() as client:
        stream = client.stream("toolbox", "ticker")
        with pytest.raises(OpFailed, match="ValueError: bad"):
            for event in stream:
                seen.append(event)
        assert seen == [{"i": 0}] and stream.done and stream.result is None
        assert list(stream) == []


def test_stream_cut_before_result_raises() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", sse_response(sse(("event", 1))))
    with gateway.client() as client, pytest.raises(OrchestratorError, match="before its result"):
        list(client.stream("toolbox", "ticker"))


def test_stream_parses_chunks_split_mid_line_and_crlf() -> None:
    gateway = FakeGateway()
    chunks = [
        b"id: 1\r\nev",
        b'ent: event\r\ndata: {"a"',
        b": 1}\r\n\r\nid: 2\r\nevent: result\r\n",
        b'data: {"result": 0}\r\n\r\n',
    ]
    response = httpx.Response(200, headers={"content-type": EVENT_STREAM}, content=iter(chunks))
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", response)
    with gateway.client() as client:
        stream = client.stream("toolbox", "ticker")
        assert list(stream) == [{"a": 1}] and stream.result == 0


def test_session_context_manager_closes_on_exit() -> None:
    gateway = FakeGateway()
    record = {"id": "s1", "pool": "toolbox", "slot": 0, "created": 1.0, "ttl_s": None}
    gateway.script("POST", "/v1/sessions", httpx.Response(201, json=record))
    gateway.script("POST", "/v1/sessions/s1/ops/incr", httpx.Response(200, json={"result": 2}))
    gateway.script("DELETE", "/v1/sessions/s1", httpx.Response(200, json={"id": "s1", "closed": True}))
    with gateway.client() as client, pytest.raises(RuntimeError), client.session("toolbox", ttl_s=30) as session:
        assert (session.id, session.pool, session.slot) == ("s1", "toolbox", 0)
        assert session.call("incr", by=2) == 2
        raise RuntimeError("the block fails: the session still closes")
    assert json.loads(gateway.requests[0].content) == {"pool": "toolbox", "ttl_s": 30}
    assert json.loads(gateway.requests[2].content) == {"by": 2}
    assert gateway.paths() == [
        "POST /v1/sessions",
        "GET /v1/pools/toolbox",
        "POST /v1/sessions/s1/ops/incr",
        "DELETE /v1/sessions/s1",
    ]
    session.close()  # idempotent
    assert len(gateway.paths("DELETE")) == 1


def test_closing_an_expired_session_is_not_an_error() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/sessions", httpx.Response(201, json={"id": "s1", "pool": "toolbox"}))
    gateway.script("DELETE", "/v1/sessions/s1", httpx.Response(404, json=error_body("session_not_found")))
    with gateway.client() as client, client.session("toolbox") as session:
        pass
    assert session.closed and gateway.paths("DELETE") == ["DELETE /v1/sessions/s1"]


# ----------------------------------------------------------- async client I/O
def run_async(body: Callable[[AsyncClient], Any], gateway: FakeGateway) -> Any:
    """Run ``body(client)`` on a fresh event loop with an AsyncClient on ``gateway``."""

    async def main() -> Any:
        async with gateway.async_client() as client:
            return await body(client)

    return asyncio.run(main())


def test_async_call_retries_overloaded_and_idempotent_connection_errors() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/pools/toolbox/ops/greet", overloaded("0"), httpx.Response(200, json={"result": "hi"}))
    ok = httpx.Response(200, json={"result": 42})
    gateway.script("POST", "/v1/pools/toolbox/ops/lookup", httpx.ConnectError("refused"), ok)

    async def body(client: AsyncClient) -> list[Any]:
        return [await client.call("toolbox", "greet", name="ada"), await client.call("toolbox", "lookup")]

    assert run_async(body, gateway) == ["hi", 42]
    assert gateway.paths().count("POST /v1/pools/toolbox/ops/greet") == 2
    assert gateway.paths().count("POST /v1/pools/toolbox/ops/lookup") == 2
    assert gateway.paths().count("GET /v1/pools/toolbox") == 1


def test_async_connection_error_not_retried_for_plain_op() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/pools/toolbox/ops/greet", httpx.ConnectError("refused"), httpx.Response(200))

    async def body(client: AsyncClient) -> Any:
        return await client.call("toolbox", "greet")

    with pytest.raises(OrchestratorError, match="cannot reach the gateway") as raised:
        run_async(body, gateway)
    assert raised.value.retryable and gateway.paths("POST") == ["POST /v1/pools/toolbox/ops/greet"]


def test_async_stream_yields_events_then_raises_error_event() -> None:
    gateway = FakeGateway()
    body_ = sse(("event", {"i": 0}), ("event", {"i": 1}), ("error", error_body("pool_unavailable", "gone")))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body_), 7):  # small chunks, split anywhere
            yield body_[i : i + 7]

    response = httpx.Response(200, headers={"content-type": EVENT_STREAM}, content=chunks())
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", response)
    seen: list[Any] = []

    async def body(client: AsyncClient) -> None:
        async with await client.stream("toolbox", "ticker", n=2) as stream:
            async for event in stream:
                seen.append(event)

    with pytest.raises(PoolUnavailable, match="gone"):
        run_async(body, gateway)
    assert seen == [{"i": 0}, {"i": 1}]


def test_async_stream_result() -> None:
    gateway = FakeGateway()
    body_ = sse(("event", "a"), ("result", {"result": {"best": 1}}))
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", sse_response(body_))

    async def body(client: AsyncClient) -> tuple[list[Any], Any]:
        stream = await client.stream("toolbox", "ticker")
        events = [event async for event in stream]
        return events, stream.result

    assert run_async(body, gateway) == (["a"], {"best": 1})


def test_async_session_context_manager_closes_on_exit() -> None:
    gateway = FakeGateway()
    gateway.script("POST", "/v1/sessions", httpx.Response(201, json={"id": "s1", "pool": "toolbox", "slot": 1}))
    gateway.script("POST", "/v1/sessions/s1/ops/incr", httpx.Response(200, json={"result": 5}))
    gateway.script("POST", "/v1/sessions/s1/ops/ticker", sse_response(sse(("event", 1), ("result", {"result": 2}))))
    gateway.script("DELETE", "/v1/sessions/s1", httpx.Response(200, json={"id": "s1", "closed": True}))

    async def body(client: AsyncClient) -> tuple[Any, list[Any], Any]:
        async with await client.session("toolbox") as session:
            value = await session.call("incr", by=5)
            stream = await session.stream("ticker")
            events = [event async for event in stream]
        assert session.closed
        return value, events, stream.result

    assert run_async(body, gateway) == (5, [1], 2)
    assert gateway.paths()[-1] == "DELETE /v1/sessions/s1"
    assert gateway.paths("DELETE") == ["DELETE /v1/sessions/s1"]


# ------------------------------------------ streams and job events (both clients)
def event_body(messages: list[str], then: Exception | None, asynchronous: bool) -> Any:
    """A streamed SSE body, one chunk per message, that raises ``then`` after the last (a dropped connection)."""

    def chunks() -> Any:
        yield from (message.encode() for message in messages)
        if then is not None:
            raise then

    async def achunks() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    return httpx.Response(200, headers={"content-type": EVENT_STREAM}, content=achunks() if asynchronous else chunks())


@pytest.mark.parametrize("asynchronous", [False, True])
def test_stream_response_is_closed_when_left_early_or_read_to_its_result(asynchronous: bool) -> None:
    gateway = FakeGateway()
    messages = [sse_message(1, "event", 0), sse_message(2, "event", 1), sse_message(3, "result", {"result": 2})]
    gateway.script("POST", "/v1/pools/toolbox/ops/ticker", *(event_body(messages, None, asynchronous) for _ in "ab"))

    async def body(client: AsyncClient) -> list[Any]:
        streams = [await client.stream("toolbox", "ticker"), await client.stream("toolbox", "ticker")]
        async with streams[0] as early:
            assert await anext(early) == 0 and not early.response.is_closed
        assert [event async for event in streams[1]] == [0, 1]
        return streams

    if asynchronous:
        streams = run_async(body, gateway)
    else:
        with gateway.client() as client:
            streams = [client.stream("toolbox", "ticker"), client.stream("toolbox", "ticker")]
            with streams[0] as early:
                assert next(early) == 0 and not early.response.is_closed
            assert list(streams[1]) == [0, 1]
    assert [(s.done, s.result, s.response.is_closed) for s in streams] == [(True, None, True), (True, 2, True)]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_job_events_resume_after_the_last_seq_when_the_connection_drops(asynchronous: bool) -> None:
    gateway = FakeGateway()
    gateway.script("GET", "/v1/jobs/j1", httpx.Response(200, json={"id": "j1", "status": "running"}))
    first = [sse_message(1, "event", {"i": 1}), ": keep-alive\n\n", sse_message(2, "event", {"i": 2})]
    second = [sse_message(3, "event", {"i": 3}), sse_message(4, "end", {"status": "succeeded"})]
    dropped = event_body(first, httpx.ReadError("connection reset"), asynchronous)
    refused = httpx.ConnectError("the gateway is restarting")
    gateway.script("GET", "/v1/jobs/j1/events", dropped, refused, event_body(second, None, asynchronous))

    async def body(client: AsyncClient) -> list[tuple[int, Any]]:
        return [event async for event in (await client.job("j1")).events()]

    if asynchronous:
        events = run_async(body, gateway)
    else:
        with gateway.client() as client:
            events = list(client.job("j1").events())
    assert events == [(1, {"i": 1}), (2, {"i": 2}), (3, {"i": 3})]
    connections = [r for r in gateway.requests if r.url.path.endswith("/events")]
    assert [r.headers["last-event-id"] for r in connections] == ["0", "2", "2"]
    assert all(r.url.params["follow"] == "true" for r in connections)


def test_job_events_give_up_when_reconnecting_gets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.client.events.RECONNECT_S", 0.0)
    gateway = FakeGateway()
    gateway.script("GET", "/v1/jobs/j1", httpx.Response(200, json={"id": "j1"}))
    gateway.script("GET", "/v1/jobs/j1/events", httpx.ConnectError("refused"))
    with gateway.client() as client, pytest.raises(OrchestratorError, match="could not reconnect"):
        list(client.job("j1").events(after=5))
    assert gateway.requests[-1].headers["last-event-id"] == "5"


def test_job_events_error_answer_raises_its_class() -> None:
    gateway = FakeGateway()
    gateway.script("GET", "/v1/jobs/j1", httpx.Response(200, json={"id": "j1"}))
    gateway.script("GET", "/v1/jobs/j1/events", httpx.Response(404, json=error_body("job_not_found")))
    with gateway.client() as client, pytest.raises(orchestrator.JobNotFound):
        next(client.job("j1").events())


def test_what_the_gateway_writes_the_sdk_reads() -> None:
    # Generated text may hold any character; the SDK reads lines as httpx's iter_lines splits them (str.splitlines:
    # U+2028, U+2029 and U+0085 end a line there too), so none of them may reach the wire raw.
    text = "two\nlines, \u2028 \u2029 \x85 \x1c \x0b \r end"
    wire = sse_message(7, "event", {"text": text}) + sse_message(8, "result", {"result": None})
    messages = decode_all(wire.splitlines())
    assert [(m.id, m.event, json.loads(m.data)) for m in messages] == [
        ("7", "event", {"text": text}),
        ("8", "result", {"result": None}),
    ]
