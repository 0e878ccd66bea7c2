"""The HTTP gateway's app: FastAPI on the data plane, its routes by family, and ``serve`` (uvicorn).

Calls go from here straight to worker actors through the same Router as the
in-process API (the coordinator only feeds the routing table). Every error is
the DESIGN body ``{"error": {code, message, pool, op, retryable, detail}}``
with its status; streaming ops answer Server-Sent Events when asked for
``text/event-stream``. Guards in front of the app (``guard``) check the Host,
the Origin, the bearer token and the body before anything else runs.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.config.schema import FileOptions, GatewayOptions
from orchestrator.dataplane.handles import Orchestrator
from orchestrator.errors import InvalidArguments, OrchestratorError
from orchestrator.gateway.calls import ADMIN_BODY
from orchestrator.gateway.docs import publish_ops
from orchestrator.gateway.guard import Guard, Origins, Tokens, check_bind, error_response, served_hosts
from orchestrator.gateway.metered import Metered
from orchestrator.gateway.openai import chat, embeddings, files, fine_tuning
from orchestrator.gateway.routes import jobs, pools, programs, sessions


def create_app(
    orch: Orchestrator,
    options: GatewayOptions | None = None,
    on_shutdown: Callable[[], None] | None = None,
    uploads: FileOptions | None = None,
) -> FastAPI:
    """The gateway app over a running orchestrator, behind its guards (``app.state.tokens`` can be replaced).

    ``uploads`` (the config's ``files``) sets how large a body ``POST /v1/files`` lets through.
    """
    options = options or GatewayOptions()
    uploads = uploads or FileOptions()
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
        return error_response(InvalidArguments(text, detail=problems), request.url.path)  # OpenAI routes: their body

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body that is not JSON, no such route) in the same error body."""
        if exc.status_code == 400:
            message = f"not valid JSON ({exc.detail})"
            error = InvalidArguments(f"body: {message}", detail=[{"field": "body", "message": message}])
            return error_response(error, request.url.path)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"code": code, "message": str(exc.detail), "pool": None, "op": None, "retryable": False, "detail": None}
        return JSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness (no auth)."""
        return {"status": "ok"}

    if on_shutdown is not None:

        @app.post("/v1/shutdown", tags=["admin"], status_code=202, openapi_extra=ADMIN_BODY)
        async def shutdown() -> dict[str, str]:
            """Ask the server (``orchestrator up``) to drain and stop (a same-origin JSON request; the token if set)."""
            on_shutdown()
            return {"status": "shutting down"}

    for family in (pools, sessions, jobs, programs, chat, embeddings, files, fine_tuning):
        app.include_router(family.router(orch))
    publish_ops(app, orch)
    app.state.tokens = Tokens(options.credentials())
    # Added innermost first: Metered -> Origins (Host, Origin) -> CORS (preflights) -> Guard (token, body) -> routes.
    app.add_middleware(
        Guard,
        tokens=app.state.tokens,
        max_body=options.max_body,
        max_json_depth=options.max_json_depth,
        max_file=uploads.max_bytes,
    )
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=options.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
        )
    served = served_hosts(options.host, options.allowed_hosts)
    app.add_middleware(Origins, served=served, cors_origins=options.cors_origins)
    app.add_middleware(Metered)  # outermost: refusals are counted too
    return app


def serve(
    orch: Orchestrator,
    options: GatewayOptions | None = None,
    on_ready: Callable[[str], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    reload: Callable[[], GatewayOptions] | None = None,
    uploads: FileOptions | None = None,
) -> None:
    """Serve the gateway with uvicorn until SIGINT/SIGTERM (or POST /v1/shutdown, when ``on_shutdown`` is given).

    With ``reload``, SIGHUP swaps in the tokens it returns (rotation without a restart).
    """
    import uvicorn

    settings = options or GatewayOptions()
    check_bind(settings.host, bool(settings.credentials()))

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if on_ready is not None:
                bound = self.servers[0].sockets[0].getsockname() if self.servers else (settings.host, settings.port)
                on_ready(f"http://{bound[0]}:{bound[1]}")

    app = create_app(orch, settings, on_shutdown=on_shutdown, uploads=uploads)
    if reload is not None:
        signal.signal(signal.SIGHUP, lambda *_: _reload_tokens(app, reload))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    Server(config).run()


def _reload_tokens(app: FastAPI, reload: Callable[[], GatewayOptions]) -> None:
    """SIGHUP: re-read the tokens; a config that no longer loads keeps the ones in use."""
    try:
        credentials = reload().credentials()
    except Exception as exc:
        print(f"gateway: tokens not reloaded, the config does not load: {exc}", file=sys.stderr, flush=True)
        return
    if not credentials and not app.state.tokens:
        return
    if not credentials:
        print("gateway: tokens not reloaded: the config names none (removing all would open the API)", file=sys.stderr)
        return
    app.state.tokens.replace(credentials)
    print(f"gateway: tokens reloaded ({', '.join(sorted(credentials))})", file=sys.stderr, flush=True)
