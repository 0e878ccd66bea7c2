"""The SDK (sync and async) against a real gateway subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import orchestrator
from orchestrator import AsyncClient, Client, errors
from tests.conftest import GatewayProcess, Start, toolbox


@pytest.fixture(scope="module")
def gateway(start_orchestrator: Start) -> Iterator[GatewayProcess]:
    orch = start_orchestrator({"tb": toolbox(size=2), "narrow": toolbox(size=1, limits={"queue": 0})})
    server = GatewayProcess(orch.namespace, token="tok")
    yield server
    server.stop()


@pytest.fixture()
def client(gateway: GatewayProcess) -> Iterator[Client]:
    with Client(gateway.url, token="tok") as sdk:
        yield sdk


def test_sync_call_pools_and_errors(client: Client) -> None:
    assert client.health() == {"status": "ok"}
    assert {p["name"] for p in client.pools()} == {"tb", "narrow"}
    assert client.call("tb", "add", a=1, b=2) == 3
    with pytest.raises(errors.InvalidArguments) as info:
        client.call("tb", "add", a="one")
    assert info.value.detail[0]["field"] == "a"
    with pytest.raises(errors.PoolNotFound):
        client.call("nope", "echo")
    with pytest.raises(errors.OpNotFound):
        client.call("tb", "nope")
    with pytest.raises(errors.OpFailed, match="ValueError: bad"):
        client.call("tb", "fail", message="bad")


def test_sync_stream_and_error_mid_stream(client: Client) -> None:
    with client.stream("tb", "ticker", n=4) as stream:
        assert [e["i"] for e in stream] == [0, 1, 2, 3]
    assert stream.result == 4
    seen = []
    with pytest.raises(errors.OpFailed, match="failed at 2"), client.stream("tb", "ticker", n=5, fail_at=2) as failing:
        seen.extend(e["i"] for e in failing)
    assert seen == [0, 1]


def test_sync_session_closes_on_exit(client: Client) -> None:
    with client.session("tb") as session:
        assert [session.call("incr", by=3) for _ in range(2)] == [3, 6]
        assert [e["i"] for e in session.stream("ticker", n=2)] == [0, 1]
        assert session.id in {s["id"] for s in client.sessions("tb")}
    assert session.id not in {s["id"] for s in client.sessions()}
    with pytest.raises(errors.SessionNotFound):
        session.call("incr")


def test_wrong_token_is_unauthorized(gateway: GatewayProcess) -> None:
    with Client(gateway.url, token="nope") as bad, pytest.raises(errors.Unauthorized):
        bad.pools()
    with Client(gateway.url) as none, pytest.raises(errors.Unauthorized):
        none.call("tb", "echo", value=1)


def test_overloaded_is_retried_with_backoff(gateway: GatewayProcess) -> None:
    import threading

    with Client(gateway.url, token="tok", retries=0) as hold, Client(gateway.url, token="tok", retries=5) as patient:
        blocker = threading.Thread(target=hold.call, args=("narrow", "sleep"), kwargs={"seconds": 0.6})
        blocker.start()
        import time

        time.sleep(0.3)
        with pytest.raises(errors.Overloaded):
            hold.call("narrow", "echo", value="no retries")
        assert patient.call("narrow", "echo", value="waited") == "waited"  # retried until the slot freed
        blocker.join()


def test_async_client(gateway: GatewayProcess) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncClient(gateway.url, token="tok") as sdk:
            results = await asyncio.gather(*(sdk.call("tb", "echo", value=i) for i in range(10)))
            async with await sdk.stream("tb", "ticker", n=3) as stream:
                events = [e["i"] async for e in stream]
            async with await sdk.session("tb") as session:
                counts = [await session.call("incr") for _ in range(3)]
            try:
                await sdk.call("tb", "add", a="x")
            except errors.InvalidArguments as exc:
                error = exc.code
            return {"results": results, "events": events, "result": stream.result, "counts": counts, "error": error}

    out = asyncio.run(main())
    assert out == {
        "results": list(range(10)),
        "events": [0, 1, 2],
        "result": 3,
        "counts": [1, 2, 3],
        "error": "invalid_arguments",
    }


def test_client_is_exported() -> None:
    assert orchestrator.Client is Client and orchestrator.AsyncClient is AsyncClient
