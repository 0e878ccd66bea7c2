"""Session routes: open, list, read and close sessions, and run ops inside one (``/v1/sessions...``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.dataplane.handles import Orchestrator, Session
from orchestrator.dataplane.router import unwrap
from orchestrator.errors import SessionNotFound
from orchestrator.gateway.calls import OP_BODY, op_arguments, run_call


class SessionCreate(BaseModel):
    """Body of POST /v1/sessions."""

    model_config = ConfigDict(extra="forbid")
    pool: str = Field(description="The pool to open the session in.")
    ttl_s: float | None = Field(None, gt=0, description="Close the session this long after it opens.")


# Op bodies are parsed by hand (any content type, clear errors naming the body), so document them here.


def router(orch: Orchestrator) -> APIRouter:
    """The session routes, bound to this orchestrator (they keep a handle per session this gateway has seen)."""
    router = APIRouter()
    sessions: dict[str, Session] = {}

    @router.post("/v1/sessions", tags=["sessions"], status_code=201)
    async def open_session(body: SessionCreate) -> dict[str, Any]:
        """Open a session pinned to one actor of the pool."""
        orch.router.pool(body.pool)
        record = unwrap(await orch.coordinator.create_session.remote(body.pool, body.ttl_s))
        sessions[record["id"]] = Session(orch, record)
        return dict(record)

    @router.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(
        pool: str | None = Query(None, description="Only this pool's sessions."),
        limit: int | None = Query(None, ge=1, le=10_000, description="At most this many (default: all)."),
        after: str | None = Query(None, description="The last session id of the previous page."),
    ) -> dict[str, Any]:
        """Open sessions, newest first, a page at a time: ``{"sessions", "has_more", "last_id"}``."""
        more = None if limit is None else limit + 1
        found = unwrap(await orch.coordinator.list_sessions.remote(pool, more, after))
        page = found if limit is None else found[:limit]
        has_more = limit is not None and len(found) > limit
        return {"sessions": page, "has_more": has_more, "last_id": page[-1]["id"] if page else None}

    @router.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str) -> dict[str, Any]:
        """One open session's record."""
        return dict(unwrap(await orch.coordinator.get_session.remote(session_id)))

    @router.delete("/v1/sessions/{session_id}", tags=["sessions"])
    async def close_session(session_id: str) -> dict[str, Any]:
        """Close a session and drop its state."""
        sessions.pop(session_id, None)
        unwrap(await orch.coordinator.close_session.remote(session_id))
        return {"id": session_id, "closed": True}

    @router.post("/v1/sessions/{session_id}/ops/{op}", tags=["sessions"], openapi_extra=OP_BODY)
    async def call_session_op(session_id: str, op: str, request: Request) -> Response:
        """Run an op inside a session (in order with the session's other calls)."""
        session = sessions.get(session_id)
        if session is None:
            record = unwrap(await orch.coordinator.get_session.remote(session_id))
            session = sessions.setdefault(session_id, Session(orch, record))
        args = await op_arguments(request, session.pool, op)
        try:
            return await run_call(orch, session.pool, op, args, session, request)
        except SessionNotFound:
            sessions.pop(session_id, None)
            raise

    return router
