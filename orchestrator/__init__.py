"""Supervised pools of Ray actors for ML workloads.

    from orchestrator import start, Worker, op, Context      # the server side (needs Ray)
    from orchestrator import Client, AsyncClient             # the HTTP SDK (httpx and pydantic only)

Everything but the errors is imported on first use, so ``import orchestrator``
(and the SDK) works where Ray, FastAPI and uvicorn are not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator import errors
from orchestrator.errors import *  # noqa: F403  (the error classes, eagerly: they need nothing)

if TYPE_CHECKING:
    from orchestrator.client import AsyncClient, Client
    from orchestrator.config import Config, load_config
    from orchestrator.contract import Context, Worker, op
    from orchestrator.control.launch import start
    from orchestrator.dataplane.handles import Job, Orchestrator, Session, connect
    from orchestrator.dataplane.stream import Stream

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    "AsyncClient": "orchestrator.client",
    "Client": "orchestrator.client",
    "Config": "orchestrator.config",
    "load_config": "orchestrator.config",
    "Context": "orchestrator.contract",
    "Worker": "orchestrator.contract",
    "op": "orchestrator.contract",
    "start": "orchestrator.control.launch",
    "Job": "orchestrator.dataplane.handles",
    "Orchestrator": "orchestrator.dataplane.handles",
    "Session": "orchestrator.dataplane.handles",
    "connect": "orchestrator.dataplane.handles",
    "Stream": "orchestrator.dataplane.stream",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AsyncClient",
    "Client",
    "Config",
    "Context",
    "Job",
    "Orchestrator",
    "Session",
    "Stream",
    "Worker",
    "connect",
    "load_config",
    "op",
    "start",
]
__all__ += errors.__all__
