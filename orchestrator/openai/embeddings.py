"""OpenAI-compatible ``/v1/embeddings``, routed to the retrieval pool."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api import Orchestrator


def router(orch: Orchestrator) -> APIRouter:
    """The embeddings route (added with the retrieval pool)."""
    return APIRouter(tags=["openai"])
