"""The Python SDK for the HTTP gateway (httpx and pydantic only: no Ray)."""

from orchestrator.client.core import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
