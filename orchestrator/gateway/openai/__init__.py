"""OpenAI-compatible routes on the gateway, each family in its own module.

Each module exposes ``router(orch) -> APIRouter``; its routes answer errors in
OpenAI's format (``{"error": {"message", "type", "param", "code"}}``), not the
DESIGN body, because OpenAI clients parse them.
"""

from orchestrator.gateway.openai import chat, embeddings, files, fine_tuning

__all__ = ["chat", "embeddings", "files", "fine_tuning"]
