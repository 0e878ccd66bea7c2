"""The gateway's own routes, one module per family; each exposes ``router(orch) -> APIRouter``."""

from orchestrator.gateway.routes import jobs, pools, programs, sessions

__all__ = ["jobs", "pools", "programs", "sessions"]
