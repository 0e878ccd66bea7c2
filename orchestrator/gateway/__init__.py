"""The HTTP gateway: the app (``app``), its guard (``guard``), op calls over HTTP (``calls``), routes by family
(``routes/``: pools, sessions, jobs) and the OpenAI-compatible routes (``openai/``)."""

from orchestrator.gateway.app import create_app, serve
from orchestrator.gateway.guard import check_bind

__all__ = ["check_bind", "create_app", "serve"]
