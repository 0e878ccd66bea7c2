"""One exception tree for everything the orchestrator reports.

    OrchestratorError (code, message, pool, op, retryable, detail)
    ├── InvalidConfig          invalid_config        400
    ├── PoolNotFound           pool_not_found        404
    ├── OpNotFound             op_not_found          404
    ├── InvalidArguments       invalid_arguments     422
    ├── Unauthorized           unauthorized          401
    ├── Forbidden              forbidden             403
    ├── PayloadTooLarge        payload_too_large     413
    ├── UnsupportedMediaType   unsupported_media_type 415
    ├── MisdirectedRequest     invalid_host          421
    ├── Overloaded             overloaded            429  (retryable)
    ├── PoolUnavailable        pool_unavailable      503  (retryable)
    ├── Timeout                timeout               504
    ├── WorkerCrashed          worker_crashed        502
    ├── SessionNotFound        session_not_found     404
    ├── SessionLost            session_lost          410
    ├── JobNotFound            job_not_found         404
    ├── JobCancelled           job_cancelled         409
    ├── FileNotFound           file_not_found        404
    ├── CorpusNotFound         corpus_not_found      404
    ├── ProgramNotFound        program_not_found     404
    ├── GpuOom                 gpu_oom               507
    ├── DependencyMissing      dependency_missing    500
    └── OpFailed               op_failed             500

Errors cross process boundaries (worker actor -> caller, gateway -> SDK) as
the plain dict of ``to_dict()`` and are rebuilt with ``OrchestratorError.from_dict``,
so the caller always gets the same class and ``code`` as the place that raised it.
"""

from __future__ import annotations

from typing import Any, ClassVar

# What ``from orchestrator.errors import *`` gives (the public packages re-export these).
__all__ = [
    "ERROR_CLASSES",
    "CorpusNotFound",
    "DependencyMissing",
    "FileNotFound",
    "Forbidden",
    "GpuOom",
    "InvalidArguments",
    "InvalidConfig",
    "JobCancelled",
    "JobNotFound",
    "MisdirectedRequest",
    "OpFailed",
    "OpNotFound",
    "OrchestratorError",
    "Overloaded",
    "PayloadTooLarge",
    "PoolNotFound",
    "PoolUnavailable",
    "ProgramNotFound",
    "SessionLost",
    "SessionNotFound",
    "Timeout",
    "Unauthorized",
    "UnsupportedMediaType",
    "WorkerCrashed",
]


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises; ``code`` is stable API."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        pool: str | None = None,
        op: str | None = None,
        retryable: bool | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pool = pool
        self.op = op
        self.retryable = self.default_retryable if retryable is None else retryable
        self.detail = detail

    def __str__(self) -> str:
        where = "/".join(p for p in (self.pool, self.op) if p)
        return f"{self.code}: {where + ': ' if where else ''}{self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments do not survive default pickling.
        return (OrchestratorError.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The wire form: the body of ``{"error": ...}`` over HTTP."""
        return {
            "code": self.code,
            "message": self.message,
            "pool": self.pool,
            "op": self.op,
            "retryable": self.retryable,
            "detail": self.detail,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> OrchestratorError:
        """Rebuild the error class named by ``data["code"]``."""
        cls = ERROR_CLASSES.get(str(data.get("code")), OrchestratorError)
        return cls(
            str(data.get("message", "")),
            pool=data.get("pool"),
            op=data.get("op"),
            retryable=data.get("retryable"),
            detail=data.get("detail"),
        )


class InvalidConfig(OrchestratorError):
    """pools.yaml (or a pool's worker class) is wrong; the message names the field."""

    code = "invalid_config"
    http_status = 400


class PoolNotFound(OrchestratorError):
    """No pool of that name is configured."""

    code = "pool_not_found"
    http_status = 404


class OpNotFound(OrchestratorError):
    """The pool's worker has no ``@op`` of that name."""

    code = "op_not_found"
    http_status = 404


class InvalidArguments(OrchestratorError):
    """An op's arguments failed validation; ``detail`` lists the fields."""

    code = "invalid_arguments"
    http_status = 422


class Unauthorized(OrchestratorError):
    """Missing or wrong bearer token."""

    code = "unauthorized"
    http_status = 401


class Forbidden(OrchestratorError):
    """The request came from a web page of another origin, or an admin route was called cross-site."""

    code = "forbidden"
    http_status = 403


class UnsupportedMediaType(OrchestratorError):
    """A request body that is not JSON (what a web page can send cross-site without asking)."""

    code = "unsupported_media_type"
    http_status = 415


class MisdirectedRequest(OrchestratorError):
    """The Host header names a host the gateway does not serve (DNS rebinding)."""

    code = "invalid_host"
    http_status = 421


class PayloadTooLarge(OrchestratorError):
    """A request body over the configured limit."""

    code = "payload_too_large"
    http_status = 413


class Overloaded(OrchestratorError):
    """The pool's queue is full; try again later."""

    code = "overloaded"
    http_status = 429
    default_retryable = True


class PoolUnavailable(OrchestratorError):
    """The pool has no live actor (failed past its restart intensity, or stopping)."""

    code = "pool_unavailable"
    http_status = 503
    default_retryable = True


class Timeout(OrchestratorError):
    """The call ran past ``call_timeout_s``."""

    code = "timeout"
    http_status = 504


class WorkerCrashed(OrchestratorError):
    """The actor running the call died before answering."""

    code = "worker_crashed"
    http_status = 502


class SessionNotFound(OrchestratorError):
    """No open session of that id (never opened, closed, or expired)."""

    code = "session_not_found"
    http_status = 404


class SessionLost(OrchestratorError):
    """The session's actor died and there was no checkpoint to restore it from."""

    code = "session_lost"
    http_status = 410


class JobNotFound(OrchestratorError):
    """No job of that id."""

    code = "job_not_found"
    http_status = 404


class JobCancelled(OrchestratorError):
    """The job was cancelled before it produced a result."""

    code = "job_cancelled"
    http_status = 409


class FileNotFound(OrchestratorError):
    """No uploaded file of that id (never uploaded, or deleted)."""

    code = "file_not_found"
    http_status = 404


class CorpusNotFound(OrchestratorError):
    """No corpus of that name on the retrieval pool (never built, or dropped); the message names it."""

    code = "corpus_not_found"
    http_status = 404


class ProgramNotFound(OrchestratorError):
    """No registered program of that name, or no such version of it; the message names which."""

    code = "program_not_found"
    http_status = 404


class GpuOom(OrchestratorError):
    """CUDA ran out of memory, even after halving ``batch_size`` down to 1."""

    code = "gpu_oom"
    http_status = 507


class DependencyMissing(OrchestratorError):
    """An op hit ImportError; the message names the module and the env file."""

    code = "dependency_missing"
    http_status = 500


class OpFailed(OrchestratorError):
    """The op raised; ``detail`` holds the exception type (and traceback in debug)."""

    code = "op_failed"
    http_status = 500


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (Ray's are long), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


ERROR_CLASSES: dict[str, type[OrchestratorError]] = {
    cls.code: cls
    for cls in (
        InvalidConfig,
        PoolNotFound,
        OpNotFound,
        InvalidArguments,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsupportedMediaType,
        MisdirectedRequest,
        Overloaded,
        PoolUnavailable,
        Timeout,
        WorkerCrashed,
        SessionNotFound,
        SessionLost,
        JobNotFound,
        JobCancelled,
        FileNotFound,
        CorpusNotFound,
        ProgramNotFound,
        GpuOom,
        DependencyMissing,
        OpFailed,
    )
}
