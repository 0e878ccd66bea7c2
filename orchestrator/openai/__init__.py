"""OpenAI-compatible routes on the gateway, each family in its own module.

Each module exposes ``router(orch) -> APIRouter``; its routes answer errors in
OpenAI's format (``{"error": {"message", "type", "param", "code"}}``), not the
DESIGN body, because OpenAI clients parse them.
"""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api import Orchestrator


def routers(orch: Orchestrator) -> list[APIRouter]:
    """Every OpenAI-compatible router, bound to this orchestrator."""
    from orchestrator.openai import chat, embeddings

    return [chat.router(orch), embeddings.router(orch)]
