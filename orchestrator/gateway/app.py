"""The HTTP gateway's app: FastAPI on the data plane, its routes by family, and ``serve`` (uvicorn).

Calls go from here straight to worker actors through the same Router as the
in-process API (the coordinator only feeds the routing table). Every error is
the DESIGN body ``{"error": {code, message, pool, op, retryable, detail}}``
with its status; streaming ops answer Server-Sent Events when asked for
``text/event-stream``. A guard in front of the app checks the bearer token and
the body size before anything else runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.errors import InvalidArguments, OrchestratorError
from orchestrator.gateway.guard import Guard, check_bind, error_response
from orchestrator.gateway.openai import chat, embeddings
from orchestrator.gateway.routes import jobs, pools, sessions


def create_app(
    orch: Orchestrator,
    token: str | None = None,
    max_body: int = 16 * 1024**2,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The gateway app over a running orchestrator (wrapped in the token and body-size guard)."""
    app = FastAPI(title="orchestrator", version="0.1.0", description="Supervised pools of Ray actors.")

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(request: Request, exc: OrchestratorError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            field = ".".join(loc) or "body"
            problems.append({"field": field, "message": str(error["msg"])})
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return error_response(InvalidArguments(text, detail=problems))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness (no auth)."""
        return {"status": "ok"}

    if on_shutdown is not None:

        @app.post("/v1/shutdown", tags=["admin"], status_code=202)
        async def shutdown() -> dict[str, str]:
            """Ask the server (``orchestrator up``) to drain and stop."""
            on_shutdown()
            return {"status": "shutting down"}

    for family in (pools, sessions, jobs, chat, embeddings):
        app.include_router(family.router(orch))
    app.add_middleware(Guard, token=token, max_body=max_body)
    return app


def serve(
    orch: Orchestrator,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body: int = 16 * 1024**2,
    on_ready: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Serve the gateway with uvicorn until SIGINT/SIGTERM (or POST /v1/shutdown, when ``on_shutdown`` is given)."""
    import uvicorn

    check_bind(host, token)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if on_ready is not None:
                bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
                on_ready(f"http://{bound[0]}:{bound[1]}")

    app = create_app(orch, token=token, max_body=max_body, on_shutdown=on_shutdown)
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()
