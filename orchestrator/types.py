"""Shared aliases and the small markers that travel between callers and actors."""

from __future__ import annotations

from typing import Any

Args = dict[str, Any]

# The coordinator's Ray actor name (in the orchestrator's namespace): how every plane finds it.
COORDINATOR_NAME = "coordinator"


def session_key(session_id: str) -> str:
    """The store key of a session's checkpointed state (written by actors, read by the control plane)."""
    return f"session:{session_id}"


def job_key(job_id: str) -> str:
    """The store key of a job's checkpoint."""
    return f"job:{job_id}"


# Error code of a host that is draining: the call never ran, and the router retries it elsewhere.
RECYCLING = "_recycling"

# What a caller sends a WorkerHost, as ONE Ray argument (each extra Ray argument
# costs ~40 us to serialize): op, args, session id, session sequence, caller id, call id.
Request = tuple[str, Args, str | None, int | None, str, str]
# A job run: job id, the pickled checkpoint to resume from (or None).
JobRun = tuple[str, bytes | None]


class Final:
    """The last item of a stream: the op's return value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Final, (self.value,))


class Batch(list[Any]):
    """Job events a host sends as one object (all its op yielded since the last send); each is logged alone."""

    __slots__ = ()


class Checkpoint:
    """A job's checkpoint (the pickled object), sent in its stream: stored with the events before it, in their
    transaction, so a re-run resumes exactly after them."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (Checkpoint, (self.blob,))


class Failure:
    """What a host returns instead of a result when the op failed: the error as a dict."""

    __slots__ = ("error",)

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failure, (self.error,))

    @property
    def code(self) -> str:
        """The error's code."""
        return str(self.error.get("code"))
