"""Jobs over HTTP: submit, SSE events with Last-Event-ID, result, cancel; the gateway restarted mid-stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import orchestrator
from tests.conftest import GatewayProcess, Start, toolbox, wait_until


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start) -> orchestrator.Orchestrator:
    return start_orchestrator({"jobs": toolbox(size=2)})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


def read_sse(lines: Iterator[str]) -> Iterator[tuple[int, str, Any]]:
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield int(fields["id"]), fields["event"], json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_submit_follow_and_result(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        submitted = http.post("/v1/jobs", json={"pool": "jobs", "op": "trials", "args": {"n": 5}})
        assert submitted.status_code == 202
        job = submitted.json()
        assert job["status"] in ("queued", "running") and job["pool"] == "jobs"
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            messages = list(read_sse(response.iter_lines()))
        assert [m[0] for m in messages[:-1]] == list(range(1, 11))
        assert messages[-1][1:] == ("end", {"status": "succeeded"})
        result = http.get(f"/v1/jobs/{job['id']}/result", params={"timeout": 10}).json()
        assert result == {"id": job["id"], "status": "succeeded", "result": {"total": 10, "started_from": 0}}
        assert http.get(f"/v1/jobs/{job['id']}").json()["events"] == 10
        assert job["id"] in {j["id"] for j in http.get("/v1/jobs", params={"pool": "jobs"}).json()["jobs"]}
        # Last-Event-ID resumes after that event; follow=false returns what is logged and ends.
        headers = {"last-event-id": "7"}
        with http.stream(
            "GET", f"/v1/jobs/{job['id']}/events", headers=headers, params={"follow": "false"}
        ) as response:
            assert [m[0] for m in read_sse(response.iter_lines())][:-1] == [8, 9, 10]


def test_gateway_restart_mid_stream_loses_and_repeats_nothing(orch: orchestrator.Orchestrator) -> None:
    first = GatewayProcess(orch.namespace)
    job = httpx.post(
        f"{first.url}/v1/jobs", json={"pool": "jobs", "op": "trials", "args": {"n": 60, "interval": 0.05}}
    ).json()
    seen: list[int] = []
    with httpx.Client(timeout=60) as http:
        with http.stream("GET", f"{first.url}/v1/jobs/{job['id']}/events") as response:
            for seq, event, _ in read_sse(response.iter_lines()):
                assert event == "event"
                seen.append(seq)
                if len(seen) == 15:
                    first.process.kill()  # the gateway dies mid-stream
                    break
        second = GatewayProcess(orch.namespace)
        try:
            headers = {"last-event-id": str(seen[-1])}
            with http.stream("GET", f"{second.url}/v1/jobs/{job['id']}/events", headers=headers) as response:
                rest = list(read_sse(response.iter_lines()))
        finally:
            second.stop()
    seen += [seq for seq, event, _ in rest if event == "event"]
    assert seen == list(range(1, 121)), "an event was missed or repeated across the gateway restart"
    assert rest[-1][1:] == ("end", {"status": "succeeded"})
    first.stop()


def test_cancel_and_bad_input(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        job = http.post(
            "/v1/jobs", json={"pool": "jobs", "op": "trials", "args": {"n": 100000, "interval": 0.01}}
        ).json()
        wait_until(lambda: http.get(f"/v1/jobs/{job['id']}").json()["events"] > 1, what="job to start")
        assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["cancelled"] is True
        wait_until(lambda: http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled", what="cancelled")
        again = http.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert again["cancelled"] is False and again["message"] == "job already cancelled"
        assert http.get(f"/v1/jobs/{job['id']}/result").json()["error"]["code"] == "job_cancelled"

        def code(response: httpx.Response, status: int) -> str:
            assert response.status_code == status, response.text
            return str(response.json()["error"]["code"])

        assert code(http.get("/v1/jobs/nope"), 404) == "job_not_found"
        assert code(http.get("/v1/jobs/nope/events"), 404) == "job_not_found"
        assert code(http.post("/v1/jobs/nope/cancel"), 404) == "job_not_found"
        assert code(http.post("/v1/jobs", json={"pool": "nope", "op": "trials"}), 404) == "pool_not_found"
        assert code(http.post("/v1/jobs", json={"pool": "jobs", "op": "nope"}), 404) == "op_not_found"
        bad = http.post("/v1/jobs", json={"pool": "jobs", "op": "trials", "args": {"n": "x"}})
        assert code(bad, 422) == "invalid_arguments" and bad.json()["error"]["detail"][0]["field"] == "n"
        assert code(http.post("/v1/jobs", json={"pool": "jobs"}), 422) == "invalid_arguments"
        running = http.post("/v1/jobs", json={"pool": "jobs", "op": "trials", "args": {"n": 50, "interval": 0.05}})
        assert code(http.get(f"/v1/jobs/{running.json()['id']}/result"), 504) == "timeout"


def test_jobs_submitted_together_over_http_and_the_sdks(gateway: GatewayProcess) -> None:
    import asyncio

    from orchestrator import AsyncClient, Client, errors

    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        answer = http.post("/v1/jobs/batch", json={"pool": "jobs", "op": "trials", "args": [{"n": 2}, {"n": 3}]})
        assert answer.status_code == 202, answer.text
        records = answer.json()["jobs"]
        assert [r["args"] for r in records] == [{"n": 2}, {"n": 3}] and {r["status"] for r in records} <= {
            "queued",
            "running",
        }
        results = [http.get(f"/v1/jobs/{r['id']}/result", params={"timeout": 30}).json() for r in records]
        assert [r["result"]["total"] for r in results] == [1, 3]

        def refused(body: dict[str, Any]) -> str:
            response = http.post("/v1/jobs/batch", json=body)
            assert response.status_code == 422, response.text
            return str(response.json()["error"]["detail"][0]["field"])

        listed = len(http.get("/v1/jobs", params={"limit": 10_000}).json()["jobs"])
        assert refused({"pool": "jobs", "op": "trials", "args": [{"n": 1}, {"n": "x"}]}) == "args[1].n"
        assert refused({"pool": "jobs", "op": "trials", "args": []}) == "args"
        assert "args" in refused({"pool": "jobs", "op": "trials", "args": {"n": 1}})
        assert len(http.get("/v1/jobs", params={"limit": 10_000}).json()["jobs"]) == listed, "a refused batch queued"

    with Client(gateway.url) as client:
        jobs = client.submit_many("jobs", "trials", [{"n": 4}, {"n": 1}])
        assert [job.result(timeout=30)["total"] for job in jobs] == [6, 0]
        with pytest.raises(errors.InvalidArguments, match=r"args\[0\]"):
            client.submit_many("jobs", "trials", [{"n": "x"}, {"n": 1}])

    async def main() -> list[Any]:
        async with AsyncClient(gateway.url) as client:
            jobs = await client.submit_many("jobs", "trials", [{"n": 2}] * 3)
            return [(await job.result(timeout=30))["total"] for job in jobs]

    assert asyncio.run(main()) == [1, 1, 1]


def test_sdk_job_events_reconnect_across_a_gateway_restart(orch: orchestrator.Orchestrator) -> None:
    import threading

    from orchestrator import Client

    first = GatewayProcess(orch.namespace)
    port = first.port
    with Client(first.url) as client:
        job = client.submit("jobs", "trials", n=60, interval=0.05)
        seen: list[int] = []
        restarted: list[GatewayProcess] = []

        def restart() -> None:
            first.process.kill()
            first.process.wait()
            restarted.append(GatewayProcess(orch.namespace, port=port))

        for seq, _ in job.events():
            seen.append(seq)
            if len(seen) == 10:
                threading.Thread(target=restart).start()
        assert seen == list(range(1, 121)), "the SDK must resume from the last id with nothing missed or repeated"
        assert job.result(timeout=30) == {"total": sum(range(60)), "started_from": 0}
        assert job.status()["status"] == "succeeded"
    for server in restarted:
        server.stop()


def test_async_sdk_jobs(gateway: GatewayProcess) -> None:
    import asyncio

    from orchestrator import AsyncClient, errors

    async def main() -> tuple[list[int], Any, str]:
        async with AsyncClient(gateway.url) as client:
            job = await client.submit("jobs", "trials", n=4)
            seqs = [seq async for seq, _ in job.events()]
            result = await job.result(timeout=30)
            try:
                await client.job("nope")
            except errors.JobNotFound as exc:
                code = exc.code
            return seqs, result, code

    seqs, result, code = asyncio.run(main())
    assert seqs == list(range(1, 9)) and result == {"total": 6, "started_from": 0} and code == "job_not_found"


def test_the_job_listing_walks_in_pages_over_http_the_sdk_and_the_cli(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    import subprocess
    import sys

    from orchestrator.client import Client
    from tests.conftest import ROOT

    ids = {orch.submit("jobs", "trials", n=1).id for _ in range(250)}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        first = http.get("/v1/jobs", params={"pool": "jobs", "limit": 100}).json()
        assert len(first["jobs"]) == 100 and first["has_more"] and first["last_id"] == first["jobs"][-1]["id"]
        bad = http.get("/v1/jobs", params={"after": "job-nope"})
        assert bad.status_code == 422 and bad.json()["error"]["detail"][0]["field"] == "after", bad.text
    seen: list[str] = []
    with Client(gateway.url) as client:
        after = None
        while True:
            page = client.jobs(pool="jobs", limit=100, after=after)
            seen += [job["id"] for job in page]
            orch.submit("jobs", "trials", n=1)  # submitted during the walk: before its start, never in a page
            if len(page) < 100:
                break
            after = page[-1]["id"]
    assert len(seen) == len(set(seen)) and ids <= set(seen), (len(seen), len(ids - set(seen)))
    command = [sys.executable, "-m", "orchestrator", "jobs", "list", "--pool", "jobs", "--limit", "2", "--json"]
    listed = subprocess.run(
        [*command, "--after", seen[0], "--url", gateway.url], capture_output=True, text=True, cwd=ROOT
    )
    assert listed.returncode == 0, listed.stderr
    assert [job["id"] for job in json.loads(listed.stdout)] == seen[1:3]
