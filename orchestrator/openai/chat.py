"""OpenAI-compatible ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``, routed to the light pool."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api import Orchestrator


def router(orch: Orchestrator) -> APIRouter:
    """The chat/completions routes (added with the light pool)."""
    return APIRouter(tags=["openai"])
