"""What a pool author writes: ``Worker``, ``@op``, ``OpSpec`` and the ``Context`` an op receives."""

from orchestrator.contract.context import Context
from orchestrator.contract.paths import confined_path
from orchestrator.contract.worker import OpSpec, Worker, load_worker_class, op, ops_of

__all__ = ["Context", "OpSpec", "Worker", "confined_path", "load_worker_class", "op", "ops_of"]
