"""The HTTP gateway as a real uvicorn subprocess, driven with raw httpx."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator
from tests.conftest import ROOT, GatewayProcess, Start, kill_and_wait_restart, toolbox

SSE = {"accept": "text/event-stream"}


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator(
        {
            "tb": toolbox(size=2, limits={"concurrency": 2}),
            "narrow": toolbox(size=1, limits={"queue": 0, "call_timeout_s": 1.0}),
            "fragile": toolbox(size=1, sessions={"checkpoint": "never"}),
            "empty": toolbox(size=0, limits={"call_timeout_s": 0.5}),
        }
    )


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace, extra=["--max-body", "4096"])
    yield server
    server.stop()


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    assert set(body) == {"code", "message", "pool", "op", "retryable", "detail"}
    return dict(body)


def sse(response: httpx.Response) -> list[tuple[int, str, Any]]:
    """(id, event, data) of each Server-Sent Event."""
    out = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def test_health_pools_and_pool_detail(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    pools = {p["name"]: p for p in http.get("/v1/pools").json()["pools"]}
    assert set(pools) == {"tb", "narrow", "fragile", "empty"}
    detail = http.get("/v1/pools/tb").json()
    assert detail["state"] == "running" and len(detail["actors"]) == 2
    assert {"state", "restarts", "rss", "sessions", "reason"} <= set(detail["actors"][0])
    assert detail["ops"]["echo"]["idempotent"] is True and detail["ops"]["ticker"]["stream"] is True
    assert "queued" in detail and "outstanding" in detail
    error_of(http.get("/v1/pools/nope"), 404, "pool_not_found")


def test_call_returns_result(http: httpx.Client) -> None:
    assert http.post("/v1/pools/tb/ops/add", json={"a": 2, "b": "3"}).json() == {"result": 5}
    assert http.post("/v1/pools/tb/ops/noop").json() == {"result": None}  # empty body: no arguments
    json_type = {"content-type": "application/json; charset=utf-8"}
    assert http.post("/v1/pools/tb/ops/echo", content=b'{"value": [1]}', headers=json_type).json() == {"result": [1]}


def test_bad_input_gets_4xx_naming_the_field(http: httpx.Client) -> None:
    body = error_of(http.post("/v1/pools/tb/ops/add", json={"a": "two"}), 422, "invalid_arguments")
    assert body["detail"][0]["field"] == "a" and body["pool"] == "tb" and body["op"] == "add"
    assert (
        "body: not valid JSON"
        in error_of(
            http.post("/v1/pools/tb/ops/add", content=b'{"a":', headers={"content-type": "application/json"}),
            422,
            "invalid_arguments",
        )["message"]
    )
    assert (
        "JSON object" in error_of(http.post("/v1/pools/tb/ops/echo", json=[1, 2]), 422, "invalid_arguments")["message"]
    )
    error_of(http.post("/v1/pools/tb/ops/add", json={"a": 1, "zzz": 2}), 422, "invalid_arguments")
    error_of(http.post("/v1/pools/nope/ops/echo", json={}), 404, "pool_not_found")
    error_of(http.post("/v1/pools/tb/ops/nope", json={}), 404, "op_not_found")
    error_of(http.post("/v1/sessions", json={"pool": 3, "ttl_s": -1}), 422, "invalid_arguments")
    body = error_of(http.post("/v1/sessions", json={"pol": "tb"}), 422, "invalid_arguments")
    assert "pool" in body["message"] and "pol" in body["message"]


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    error_of(http.post("/v1/pools/tb/ops/echo", json={"value": "x" * 5000}), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts received bytes
        yield b'{"value": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = http.post("/v1/pools/tb/ops/echo", content=chunks(), headers={"content-type": "application/json"})
    error_of(chunked, 413, "payload_too_large")


def test_op_errors_map_to_statuses(http: httpx.Client) -> None:
    body = error_of(http.post("/v1/pools/tb/ops/fail", json={"message": "nope"}), 500, "op_failed")
    assert body["detail"]["type"] == "ValueError" and "traceback" not in body["detail"]
    error_of(http.post("/v1/pools/tb/ops/needs_module", json={"module": "no_such_mod"}), 500, "dependency_missing")
    error_of(http.post("/v1/pools/tb/ops/oom"), 507, "gpu_oom")
    error_of(http.post("/v1/pools/narrow/ops/sleep", json={"seconds": 10}), 504, "timeout")
    error_of(http.post("/v1/pools/empty/ops/echo", json={}), 503, "pool_unavailable")


def test_overloaded_is_429_with_retry_after(gateway: GatewayProcess) -> None:
    import threading

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        blocker = threading.Thread(
            target=http.post, args=("/v1/pools/narrow/ops/sleep",), kwargs={"json": {"seconds": 0.8}}
        )
        blocker.start()
        time.sleep(0.3)
        response = http.post("/v1/pools/narrow/ops/echo", json={"value": 1})
        blocker.join()
    body = error_of(response, 429, "overloaded")
    assert body["retryable"] is True and response.headers["retry-after"] == "1"


def test_worker_crashed_is_502(http: httpx.Client, orch: orchestrator.Orchestrator) -> None:
    error_of(http.post("/v1/pools/fragile/ops/crash"), 502, "worker_crashed")
    from tests.conftest import wait_until

    wait_until(
        lambda: orch.status()["fragile"]["restarts"] >= 1 and orch.status()["fragile"]["actors"][0]["state"] == "ready"
    )


def test_stream_sends_events_then_result(http: httpx.Client) -> None:
    response = http.post("/v1/pools/tb/ops/ticker", json={"n": 3}, headers=SSE)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert sse(response) == [
        (1, "event", {"i": 0}),
        (2, "event", {"i": 1}),
        (3, "event", {"i": 2}),
        (4, "result", {"result": 3}),
    ]


def test_stream_error_event_after_the_events(http: httpx.Client) -> None:
    messages = sse(http.post("/v1/pools/tb/ops/ticker", json={"n": 5, "fail_at": 2}, headers=SSE))
    assert [m[1] for m in messages] == ["event", "event", "error"]
    assert messages[-1][2]["error"]["code"] == "op_failed"
    # Errors before the first event keep their real status.
    error_of(http.post("/v1/pools/tb/ops/ticker", json={"n": "x"}, headers=SSE), 422, "invalid_arguments")


def test_client_disconnect_stops_the_op(gateway: GatewayProcess, tmp_path: Path) -> None:
    mark = tmp_path / "produced"
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        args = {"n": 100_000, "interval": 0.01, "mark": str(mark)}
        with http.stream("POST", "/v1/pools/tb/ops/ticker", json=args, headers=SSE) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("id: 1")
    time.sleep(1.0)
    stopped_at = int(mark.read_text())
    time.sleep(0.8)
    assert int(mark.read_text()) == stopped_at, "the op kept running after the client left"
    assert stopped_at < 1000


def test_sessions_over_http(http: httpx.Client) -> None:
    created = http.post("/v1/sessions", json={"pool": "tb"})
    assert created.status_code == 201
    sid = created.json()["id"]
    assert [http.post(f"/v1/sessions/{sid}/ops/incr", json={"by": 2}).json()["result"] for _ in range(3)] == [2, 4, 6]
    assert sid in {s["id"] for s in http.get("/v1/sessions", params={"pool": "tb"}).json()["sessions"]}
    assert http.get(f"/v1/sessions/{sid}").json()["pool"] == "tb"
    messages = sse(http.post(f"/v1/sessions/{sid}/ops/ticker", json={"n": 2}, headers=SSE))
    assert messages[-1] == (3, "result", {"result": 2})
    assert http.delete(f"/v1/sessions/{sid}").json() == {"id": sid, "closed": True}
    error_of(http.post(f"/v1/sessions/{sid}/ops/incr", json={}), 404, "session_not_found")
    error_of(http.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    error_of(http.delete(f"/v1/sessions/{sid}"), 404, "session_not_found")
    error_of(http.post("/v1/sessions", json={"pool": "nope"}), 404, "pool_not_found")


def test_session_lost_is_410(http: httpx.Client, orch: orchestrator.Orchestrator) -> None:
    sid = http.post("/v1/sessions", json={"pool": "fragile"}).json()["id"]
    pid = http.post(f"/v1/sessions/{sid}/ops/whoami").json()["result"]["pid"]
    kill_and_wait_restart(orch, "fragile", pid)
    error_of(http.post(f"/v1/sessions/{sid}/ops/incr"), 410, "session_lost")


def test_openapi_documents_every_route(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/pools", "/v1/pools/{pool}", "/v1/pools/{pool}/ops/{op}", "/v1/sessions"} <= set(paths)
    assert "requestBody" in paths["/v1/pools/{pool}/ops/{op}"]["post"]
    assert http.get("/docs").status_code == 200


def test_token_protects_every_route_but_healthz(orch: orchestrator.Orchestrator) -> None:
    server = GatewayProcess(orch.namespace, token="s3cret")
    try:
        good = {"authorization": "Bearer s3cret"}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            spec = http.get("/openapi.json", headers=good).json()
            routes = [(m.upper(), p) for p, methods in spec["paths"].items() for m in methods]
            routes += [("GET", "/openapi.json"), ("GET", "/docs")]
            assert len(routes) >= 10
            for method, path in routes:
                url = path.replace("{pool}", "tb").replace("{op}", "echo").replace("{session_id}", "x")
                expected = 200 if path == "/healthz" else 401
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
                    response = http.request(method, url, headers=headers)
                    assert response.status_code == expected, (method, path, headers, response.text)
                    if expected == 401:
                        assert response.json()["error"]["code"] == "unauthorized"
            assert http.post("/v1/pools/tb/ops/echo", json={"value": 1}, headers=good).json() == {"result": 1}
    finally:
        server.stop()


def test_non_loopback_bind_without_token_refuses_to_start() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    for command in (["gateway", "--host", "0.0.0.0"], ["up", "--host", "0.0.0.0", "--config", "pools.yaml"]):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert "refusing to bind the gateway to 0.0.0.0 without a token" in result.stdout + result.stderr


def test_json_writer_turns_arrays_into_lists_and_refuses_what_has_no_json_form() -> None:
    import numpy as np

    from orchestrator.gateway.jsonbody import dumps, sse_message

    value = {"v": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2], "x": np.float32(0.1), 3: float("nan")}
    assert json.loads(dumps(value)) == {"v": [[0.0, 2.0], [3.0, 5.0]], "x": 0.1, "3": None}  # NaN is no JSON
    assert json.loads(dumps({"big": 2**70})) == {"big": 2**70}  # past orjson's 64 bits: written by json
    with pytest.raises(TypeError, match="object"):
        dumps({"result": object()})
    # A stream under way cannot become an error status: there, what has no JSON form is written as its str.
    message = sse_message(4, "event", {"v": np.ones(2, np.float32), "when": object()})
    head, data = message.rstrip("\n").rsplit("\ndata: ", 1)
    assert head == "id: 4\nevent: event" and json.loads(data)["v"] == [1.0, 1.0]
    assert json.loads(data)["when"].startswith("<object object")
