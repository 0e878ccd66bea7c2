"""Pool routes: list and read pools, restart a failed one, run ops (``/v1/pools...``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.router import unwrap
from orchestrator.gateway.calls import ADMIN_BODY, OP_BODY, op_arguments, run_call


def router(orch: Orchestrator) -> APIRouter:
    """The pool routes, bound to this orchestrator."""
    router = APIRouter()

    @router.get("/v1/pools", tags=["pools"])
    async def list_pools() -> dict[str, Any]:
        """Every pool with its actors, sessions, counters and recent events."""
        status = await orch.coordinator.status.remote()
        return {"pools": [_with_queue(orch, p) for p in status.values()]}

    @router.get("/v1/pools/{pool}", tags=["pools"])
    async def get_pool(pool: str) -> dict[str, Any]:
        """One pool: actors (state, restarts, memory, pending reason), queue, sessions, ops."""
        status = await orch.coordinator.status.remote()
        if pool not in status:
            orch.router.pool(pool)  # raises pool_not_found with the known pools
        return _with_queue(orch, status[pool])

    @router.post("/v1/pools/{pool}/restart", tags=["admin"], openapi_extra=ADMIN_BODY)
    async def restart_pool(pool: str) -> dict[str, Any]:
        """Start a failed or stopped pool again (a same-origin JSON request, and the token when one is set)."""
        return dict(unwrap(await orch.coordinator.restart_pool.remote(pool)))

    @router.post("/v1/pools/{pool}/ops/{op}", tags=["ops"], openapi_extra=OP_BODY)
    async def call_op(pool: str, op: str, request: Request) -> Response:
        """Run an op. With ``Accept: text/event-stream`` a streaming op answers Server-Sent Events."""
        return await run_call(orch, pool, op, await op_arguments(request, pool, op), None, request)

    return router


def _with_queue(orch: Orchestrator, pool: dict[str, Any]) -> dict[str, Any]:
    """Add this gateway's outstanding and queued calls for the pool."""
    entry = orch.router.table["pools"].get(pool["name"])
    outstanding = orch.router.pool_outstanding.get(pool["name"], 0)
    capacity = len(entry["actors"]) * entry["limits"]["concurrency"] if entry else 0
    return {**pool, "outstanding": outstanding, "queued": max(0, outstanding - capacity)}
