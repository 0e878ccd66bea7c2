"""Listings walk in pages with nothing repeated or skipped while items are added: open sessions (kept in
memory) over HTTP and the SDK, uploaded files (the store) with the official openai client, as OpenAI pages
them (``after``, ``limit``, ``has_more``); a cursor that names nothing is refused naming ``after``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import orchestrator
from orchestrator.client import Client
from tests.conftest import GatewayProcess, Start, toolbox

openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator({"pg": toolbox(size=1, sessions={"max_open": 2000})})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


def test_open_sessions_walk_in_pages_while_sessions_open(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    opened = {orch.session("pg").id for _ in range(250)}
    seen: list[str] = []
    with Client(gateway.url) as client:
        after = None
        while True:
            page = client.sessions(pool="pg", limit=100, after=after)
            seen += [s["id"] for s in page]
            orch.session("pg")  # opened during the walk: newer than where it started, never in a page
            if len(page) < 100:
                break
            after = page[-1]["id"]
        assert len(seen) == len(set(seen)) == 250 and set(seen) == opened
        assert len(client.sessions(pool="pg")) == 253  # no limit: every open session
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        first = http.get("/v1/sessions", params={"pool": "pg", "limit": 100}).json()
        assert first["has_more"] and first["last_id"] == first["sessions"][-1]["id"]
        bad = http.get("/v1/sessions", params={"after": "nope"})
        assert bad.status_code == 422 and bad.json()["error"]["detail"][0]["field"] == "after", bad.text
    assert [s["id"] for s in orch.sessions("pg", limit=2, after=seen[0])] == seen[1:3]


def test_files_walk_in_pages_with_the_openai_client_while_files_are_uploaded(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    uploaded = {orch.upload_file(f"row {i}\n".encode(), f"f{i}.txt", "user_data")["id"] for i in range(250)}
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    seen: list[str] = []
    page = client.files.list(purpose="user_data", limit=100)
    while True:
        seen += [f.id for f in page.data]
        orch.upload_file(b"late\n", "late.txt", "user_data")  # uploaded during the walk: never in a later page
        if not page.has_more:
            break
        page = client.files.list(purpose="user_data", limit=100, after=page.data[-1].id)
    assert len(seen) == len(set(seen)) == 250 and set(seen) == uploaded
    with pytest.raises(openai.APIStatusError) as refused:  # 422, as every invalid parameter on these routes today
        client.files.list(after="file-nope")
    assert refused.value.status_code == 422 and refused.value.param == "after", refused.value.body
    assert [f["id"] for f in orch.files("user_data", limit=2, after=seen[0])] == seen[1:3]
