"""Job routes: submit, list, read, follow (SSE, honouring ``Last-Event-ID``), wait for the result, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.dataplane.handles import Orchestrator, job_outcome
from orchestrator.dataplane.router import unwrap
from orchestrator.errors import Timeout
from orchestrator.gateway.jsonbody import sse_message

SSE = "text/event-stream"


class JobSubmit(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(description="The pool to run the job in.")
    op: str = Field(description="The op to run (usually a streaming op).")
    args: dict[str, Any] = Field(default_factory=dict, description="The op's keyword arguments.")
    session: str | None = Field(None, description="Run inside this session (its actor and state).")
    max_retries: int | None = Field(None, ge=0, description="Re-runs after the actor dies (default: jobs.max_retries).")


class JobBatch(BaseModel):
    """Body of POST /v1/jobs/batch."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(description="The pool to run the jobs in.")
    op: str = Field(description="The op each job runs.")
    args: list[dict[str, Any]] = Field(description="One job per item: its arguments (at most jobs.batch_limit).")
    session: str | None = Field(None, description="Run them inside this session (its actor and state).")
    max_retries: int | None = Field(None, ge=0, description="Re-runs after the actor dies (default: jobs.max_retries).")


def router(orch: Orchestrator) -> APIRouter:
    """The job routes, bound to this orchestrator."""
    router = APIRouter()

    @router.post("/v1/jobs", tags=["jobs"], status_code=202)
    async def submit_job(body: JobSubmit) -> dict[str, Any]:
        """Queue a long-running job; answers at once with its record (unknown pool/op and bad args: 4xx now)."""
        submitted = orch.coordinator.submit_job.remote(body.pool, body.op, body.args, body.session, body.max_retries)
        return _job_json(unwrap(await submitted))

    @router.post("/v1/jobs/batch", tags=["jobs"], status_code=202)
    async def submit_jobs(body: JobBatch) -> dict[str, Any]:
        """Queue one job per item of ``args`` in one commit: ``{"jobs": [records, in order]}``. A bad item refuses
        the whole batch with a 4xx naming it (``args[3].n``), and none is queued."""
        submitted = orch.coordinator.submit_jobs.remote(body.pool, body.op, body.args, body.session, body.max_retries)
        return {"jobs": [_job_json(record) for record in unwrap(await submitted)]}

    @router.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        pool: str | None = Query(None, description="Only this pool's jobs."),
        status: str | None = Query(None, description="Only jobs in this state."),
        limit: int = Query(100, ge=1, le=10_000, description="At most this many, newest first."),
        after: str | None = Query(None, description="The last job id of the previous page: the page after it."),
    ) -> dict[str, Any]:
        """Jobs, newest first, a page at a time: ``{"jobs", "has_more", "last_id"}`` (pass ``after=last_id``)."""
        jobs = unwrap(await orch.coordinator.list_jobs.remote(pool, status, limit + 1, after))
        page = [_job_json(job) for job in jobs[:limit]]
        return {"jobs": page, "has_more": len(jobs) > limit, "last_id": page[-1]["id"] if page else None}

    @router.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """One job: status, attempts, events logged, result or error."""
        return _job_json(unwrap(await orch.coordinator.get_job.remote(job_id)))

    @router.get("/v1/jobs/{job_id}/events", tags=["jobs"])
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
        first = unwrap(await orch.coordinator.job_events.remote(job_id, start, 0.0))  # job_not_found before answering
        return StreamingResponse(
            _job_sse(orch, job_id, start, first, follow), media_type=SSE, headers={"Cache-Control": "no-store"}
        )

    @router.get("/v1/jobs/{job_id}/result", tags=["jobs"])
    async def job_result(
        job_id: str, timeout: float = Query(0.0, ge=0, le=600, description="Wait up to this many seconds.")
    ) -> dict[str, Any]:
        """The job's result; its error (with the error's status) if it failed; 504 if not done in time."""
        deadline = time.monotonic() + timeout
        while True:
            job = unwrap(await orch.coordinator.get_job.remote(job_id))
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return {"id": job_id, "status": job["status"], "result": job_outcome(job)}
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"job {job_id} is still {job['status']}", retryable=True)
            await orch.coordinator.job_events.remote(job_id, job["events"], min(left, 5.0))

    @router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel: the op sees ``ctx.cancelled`` and is killed after the grace period. A finished job: a no-op."""
        return dict(unwrap(await orch.coordinator.cancel_job.remote(job_id)))

    return router


def _job_json(job: dict[str, Any]) -> dict[str, Any]:
    """A job record as JSON (non-JSON results and arguments become their repr)."""
    return json.loads(json.dumps(job, default=repr))


async def _job_sse(
    orch: Orchestrator, job_id: str, after: int, first: dict[str, Any], follow: bool
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
        batch = unwrap(await orch.coordinator.job_events.remote(job_id, after, 0.0 if not follow else 10.0))
