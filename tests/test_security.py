"""Safe defaults against a live gateway: what a web page, a stray client or a hostile body can do, refused.

Each hostile request is answered 4xx before anything runs (the toolbox's
``ticker`` writes a mark file on each step, so "nothing ran" is seen on disk),
and the service still answers afterwards.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator
from orchestrator.errors import InvalidArguments, InvalidConfig, Overloaded
from orchestrator.gateway.guard import host_allowed, host_name, json_too_deep, served_hosts
from tests.conftest import GatewayProcess, Start, toolbox, wait_until

ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {"tb": toolbox(size=1, limits={"concurrency": 4}), "few": toolbox(size=1, sessions={"max_open": 2})},
        jobs={"max_retries_limit": 5},
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gateway") / "pools.yaml"
    write_gateway(path, {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"})
    return path


def write_gateway(path: Path, tokens: dict[str, str]) -> None:
    lines = ["gateway:", f"  cors_origins: [{ALLOWED_ORIGIN}]", "  allowed_hosts: [api.example.com]", "  tokens:"]
    lines += [f"    {name}: {token}" for name, token in tokens.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator, config: Path) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace, extra=["--config", str(config)])
    yield server
    server.stop()


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": "Bearer bob-token-0123456789"}
    with httpx.Client(base_url=gateway.url, timeout=30, headers=headers) as client:
        yield client


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def ticker(mark: Path) -> bytes:
    return f'{{"n": 1, "mark": "{mark}"}}'.encode()


def test_a_cross_site_body_does_not_run(http: httpx.Client, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = http.post("/v1/pools/tb/ops/ticker", content=ticker(mark), headers={"content-type": content_type})
        assert content_type in refused(response, 415, "unsupported_media_type")["message"]
    bare = http.post("/v1/pools/tb/ops/ticker", content=ticker(mark))  # a body with no Content-Type at all
    refused(bare, 415, "unsupported_media_type")
    assert not mark.exists()
    ok = http.post("/v1/pools/tb/ops/ticker", content=ticker(mark), headers={"content-type": "application/json"})
    assert ok.json() == {"result": 1} and mark.read_text() == "1"  # the same call as JSON runs


def test_a_foreign_host_header_is_refused(http: httpx.Client, gateway: GatewayProcess, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    json_type = {"content-type": "application/json"}
    for host in ("evil.example.com", f"evil.example.com:{gateway.port}", "127.0.0.1.evil.example.com"):
        response = http.post("/v1/pools/tb/ops/ticker", content=ticker(mark), headers={**json_type, "host": host})
        assert "gateway.allowed_hosts" in refused(response, 421, "invalid_host")["message"]
    assert not mark.exists()
    for host in (f"localhost:{gateway.port}", "api.example.com", f"[::1]:{gateway.port}"):
        assert http.post("/v1/pools/tb/ops/add", json={"a": 1}, headers={"host": host}).json() == {"result": 1}


def test_cross_origin_requests_are_refused_unless_allowed(
    http: httpx.Client, gateway: GatewayProcess, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    json_type = {"content-type": "application/json"}
    for origin in ("http://evil.example.com", "null", f"http://127.0.0.1:{gateway.port + 1}"):
        response = http.post("/v1/pools/tb/ops/ticker", content=ticker(mark), headers={**json_type, "origin": origin})
        assert "gateway.cors_origins" in refused(response, 403, "forbidden")["message"]
    refused(http.get("/v1/pools", headers={"origin": "http://evil.example.com"}), 403, "forbidden")
    assert not mark.exists()
    same = http.post("/v1/pools/tb/ops/add", json={"a": 2}, headers={"origin": gateway.url})
    assert same.json() == {"result": 2}  # the gateway's own pages (/docs) are same-origin
    allowed = http.post("/v1/pools/tb/ops/add", json={"a": 3}, headers={"origin": ALLOWED_ORIGIN})
    assert allowed.json() == {"result": 3} and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    preflight = httpx.options(  # a browser's preflight carries no token: CORS answers it before the token check
        f"{gateway.url}/v1/pools/tb/ops/add",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    evil_preflight = httpx.options(
        f"{gateway.url}/v1/pools/tb/ops/add",
        headers={"origin": "http://evil.example.com", "access-control-request-method": "POST"},
    )
    assert evil_preflight.status_code == 403 and "access-control-allow-origin" not in evil_preflight.headers


def test_admin_routes_take_same_origin_json_only(http: httpx.Client, orch: orchestrator.Orchestrator) -> None:
    restart = "/v1/pools/tb/restart"
    refused(http.post(restart), 415, "unsupported_media_type")  # no body, no type: a form could send that
    refused(http.post(restart, json={}, headers={"origin": ALLOWED_ORIGIN}), 403, "forbidden")  # CORS is not enough
    answer = http.post(restart, json={})
    assert answer.status_code == 200 and answer.json()["restarted"] is False  # reached: tb is running, not failed
    refused(httpx.post(f"{http.base_url}{restart}", json={}), 401, "unauthorized")
    assert orch.status()["tb"]["state"] == "running"


def test_deep_json_is_422_on_every_route(http: httpx.Client, tmp_path: Path) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    json_type = {"content-type": "application/json"}
    body = b'{"n": 1, "mark": "' + str(tmp_path / "ran").encode() + b'", "x": ' + deep + b"}"
    error = refused(http.post("/v1/pools/tb/ops/ticker", content=body, headers=json_type), 422, "invalid_arguments")
    assert "gateway.max_json_depth" in error["message"] and error["detail"][0]["field"] == "body"
    chat = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": ' + deep + b"}", headers=json_type)
    assert chat.status_code == 422 and "max_json_depth" in chat.json()["error"]["message"]  # OpenAI's error body
    assert chat.json()["error"]["param"] == "body"
    assert not (tmp_path / "ran").exists()
    # Brackets inside strings are text, not nesting; 64 levels are fine.
    text = http.post("/v1/pools/tb/ops/echo", json={"value": "[" * 5000})
    assert text.json() == {"result": "[" * 5000}
    nested: Any = 1
    for _ in range(60):
        nested = [nested]
    assert http.post("/v1/pools/tb/ops/echo", json={"value": nested}).json() == {"result": nested}
    assert http.get("/healthz").status_code == 200


def test_named_tokens_rotate_on_sighup(gateway: GatewayProcess, config: Path) -> None:
    def status(token: str) -> int:
        return httpx.get(f"{gateway.url}/v1/pools", headers={"authorization": f"Bearer {token}"}).status_code

    assert status("alice-token-0123456789") == 200 and status("bob-token-0123456789") == 200
    assert status("carol-token-0123456789") == 401 and status("alice-token-012345678") == 401
    write_gateway(config, {"bob": "bob-token-0123456789", "carol": "carol-token-0123456789"})
    try:
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: status("carol-token-0123456789") == 200, timeout=10, what="the new token to work")
        assert status("alice-token-0123456789") == 401 and status("bob-token-0123456789") == 200
        assert gateway.process.poll() is None  # reloaded in place, not restarted
    finally:
        write_gateway(config, {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"})
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: status("alice-token-0123456789") == 200, timeout=10, what="the tokens to be restored")


def test_max_retries_is_bounded(http: httpx.Client, orch: orchestrator.Orchestrator) -> None:
    before = len(http.get("/v1/jobs").json()["jobs"])
    body = {"pool": "tb", "op": "trials", "args": {"n": 1}, "max_retries": 10**30}
    error = refused(http.post("/v1/jobs", json=body), 422, "invalid_arguments")
    assert error["detail"][0]["field"] == "max_retries" and "jobs.max_retries_limit" in error["message"]
    with pytest.raises(InvalidArguments, match="max_retries_limit"):
        orch.submit("tb", "trials", _max_retries=6, n=1)
    assert len(http.get("/v1/jobs").json()["jobs"]) == before  # nothing was queued
    assert orch.submit("tb", "trials", _max_retries=5, n=1).result(timeout=60) == {"total": 0, "started_from": 0}


def test_open_sessions_are_capped_per_pool(orch: orchestrator.Orchestrator) -> None:
    first, second = orch.session("few"), orch.session("few")
    with pytest.raises(Overloaded, match=r"sessions\.max_open"):
        orch.session("few")
    first.close()
    third = orch.session("few")
    assert third.call("incr", by=2) == 2
    second.close()
    third.close()


def test_an_op_whose_hints_do_not_resolve_fails_pool_start(start_orchestrator: Start) -> None:
    pool = {**toolbox(), "worker": "tests.kit.unresolved:Unresolved"}
    with pytest.raises(InvalidConfig, match=r"pools\.bad\.worker: .*@op lookup's type hints cannot be resolved"):
        start_orchestrator({"bad": pool})


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("::1", "::1"), ("Example.COM", "example.com")],
)
def test_host_header_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_served_hosts_and_patterns() -> None:
    served = served_hosts("127.0.0.1", ["api.example.com", "*.corp.example"])
    assert host_allowed("localhost", served) and host_allowed("api.example.com", served)
    assert host_allowed("a.b.corp.example", served) and not host_allowed("corp.example.evil", served)
    assert not host_allowed("evil.example.com", served) and not host_allowed("127.0.0.1.nip.io", served)
    assert host_allowed("anything", served_hosts("127.0.0.1", ["*"]))
    wildcard = served_hosts("0.0.0.0", [])
    assert socket.gethostname().lower() in wildcard and "0.0.0.0" not in wildcard


def test_json_depth_counts_nesting_not_brackets_in_strings() -> None:
    assert not json_too_deep(b'{"a": "[[[[[[[[[[[["}', 4)
    assert not json_too_deep(b'{"a": "\\"[[[[[[[[[[", "b": [1, [2]]}', 4)  # an escaped quote inside a string
    assert json_too_deep(b'{"a": [[[[1]]]]}', 4)
    assert not json_too_deep(b'{"a": [[[1]]]}', 4)
    assert not json_too_deep(b"[" + b"[1]," * 10_000 + b"[1]]", 4)  # many lists, shallow
