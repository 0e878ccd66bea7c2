"""Supervised pools of Ray actors for ML workloads.

from orchestrator import start, Worker, op, Context
"""

from orchestrator.api import Job, Orchestrator, Session, Stream, connect, start
from orchestrator.client import AsyncClient, Client
from orchestrator.config import Config, load_config
from orchestrator.errors import (
    DependencyMissing,
    GpuOom,
    InvalidArguments,
    InvalidConfig,
    JobCancelled,
    JobNotFound,
    OpFailed,
    OpNotFound,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    PoolNotFound,
    PoolUnavailable,
    SessionLost,
    SessionNotFound,
    Timeout,
    Unauthorized,
    WorkerCrashed,
)
from orchestrator.worker import Context, Worker, op

__all__ = [
    "AsyncClient",
    "Client",
    "Config",
    "Context",
    "DependencyMissing",
    "GpuOom",
    "InvalidArguments",
    "InvalidConfig",
    "Job",
    "JobCancelled",
    "JobNotFound",
    "OpFailed",
    "OpNotFound",
    "Orchestrator",
    "OrchestratorError",
    "Overloaded",
    "PayloadTooLarge",
    "PoolNotFound",
    "PoolUnavailable",
    "Session",
    "SessionLost",
    "SessionNotFound",
    "Stream",
    "Timeout",
    "Unauthorized",
    "Worker",
    "WorkerCrashed",
    "connect",
    "load_config",
    "op",
    "start",
]
