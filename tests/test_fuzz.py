"""Fuzzing a live gateway from its own OpenAPI document (schemathesis): no request gets a server error.

The document covers every route and, for each running pool, each op with its
argument schema (``gateway/docs.py``), so the generated bodies reach the
ops' validation too. Pools: ``typed`` (tests/kit/typed.py, instant ops with
many argument types) and the product's ``demo`` pool. The demo's ``ticker``
and ``trials`` are left out: they sleep by design (``interval``), which would
spend the time budget waiting, not fuzzing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrator
from tests.conftest import GatewayProcess, Start

CASES_PER_OPERATION = 50
SLOW_OPS = {"/v1/pools/demo/ops/ticker", "/v1/pools/demo/ops/trials"}


@pytest.fixture(scope="module")
def gateway(start_orchestrator: Start) -> Iterator[GatewayProcess]:
    small = {"size": 1, "resources": {"num_cpus": 0.25}, "limits": {"concurrency": 4, "call_timeout_s": 30}}
    orch: orchestrator.Orchestrator = start_orchestrator(
        {"typed": {"worker": "tests.kit.typed:Typed", **small}, "demo": {"worker": "workers.demo:Demo", **small}}
    )
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


def test_no_generated_request_gets_a_server_error(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "/v1/pools/typed/ops/shapes" in document["paths"]  # each op is published with its schema
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: dict[int, int] = {}
    failures: list[str] = []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for operation in operations:
            if operation.path not in SLOW_OPS:
                fuzz(operation, client, statuses, failures)
    sent = sum(statuses.values())
    print(f"fuzz: {sent} requests, statuses {dict(sorted(statuses.items()))}")
    assert sent >= 1000, f"only {sent} requests were generated"
    assert not failures, "\n".join(failures[:20])
    assert statuses.get(200, 0) > 100 and statuses.get(422, 0) > 100  # valid calls ran, invalid ones were named
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def fuzz(operation: Any, client: httpx.Client, statuses: dict[int, int], failures: list[str]) -> None:
    """Send CASES_PER_OPERATION generated requests (valid and invalid) to one operation; record 5xx answers."""

    @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data: Any) -> None:
        mode = data.draw(st.sampled_from(list(schemathesis.GenerationMode)))
        case = data.draw(operation.as_strategy(mode))
        request = case.as_transport_kwargs(base_url=str(client.base_url))
        response = client.request(
            request["method"],
            request["url"],
            headers=request.get("headers"),
            params=request.get("params"),
            json=request.get("json"),
            content=request.get("data") if isinstance(request.get("data"), bytes | str) else None,
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}")

    one()
