"""``Context``: what an op sees of its call (session state, checkpoints, resume point, progress, cancellation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.contract.paths import state_dir
from orchestrator.errors import InvalidArguments

if TYPE_CHECKING:
    from orchestrator.dataplane.handles import Orchestrator


@dataclass
class Context:
    """What an op sees of its call: session state, checkpoints, progress, cancellation."""

    pool: str
    op: str
    session_id: str | None = None
    job_id: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    resume: Any = None
    _cancelled: bool = field(default=False, repr=False)  # set from the admin thread; a bool store is atomic
    _checkpoint: Callable[[Any], None] | None = field(default=None, repr=False)
    _orchestrator: Callable[[], Orchestrator] | None = field(default=None, repr=False)
    _emit: Callable[[Any], bool] | None = field(default=None, repr=False)  # puts an item in a batched stream
    last_progress: dict[str, Any] = field(default_factory=dict, repr=False)
    yielded: int = field(default=0, repr=False)  # events this run has yielded (jobs: for checkpoint positions)
    pending: list[Any] = field(default_factory=list, repr=False)  # job progress events, sent before the next one
    started: float = field(default_factory=time.time, repr=False)  # when the call began (status: seconds running)
    ray_task: str | None = field(default=None, repr=False)  # a job's Ray task name (status; the dashboard's tasks)

    @property
    def cancelled(self) -> bool:
        """True once the caller went away or cancelled; a long op should stop soon after."""
        return self._cancelled

    def checkpoint(self, obj: Any = None) -> None:
        """Save ``obj`` (in a session: the session state when ``obj`` is None) durably.

        After a crash, a session is restored from its last checkpoint and a job is
        re-run with ``ctx.resume`` set to it. A session's checkpoint is stored when
        this returns. A job's goes out in its stream and is stored with the events
        yielded (and progress reported) before it, in their transaction, so this
        returns at once and a re-run resumes exactly after those events.
        """
        if self._checkpoint is None:  # the caller's mistake (a job's op called as a plain call), not the op's
            message = (
                f"op {self.op!r} checkpoints its progress, so it runs as a job (orch.submit, POST /v1/jobs)"
                " or in a session; this call has neither"
            )
            raise InvalidArguments(message, pool=self.pool, op=self.op, detail=[{"field": "op", "message": message}])
        self._checkpoint(self.state if obj is None else obj)

    @property
    def job_dir(self) -> Path:
        """This job's own folder, ``state_dir/jobs/<job id>`` (created on first use), the same for every
        re-run: for files too large for a checkpoint (a trainer's checkpoints), recorded with ``checkpoint``."""
        if self.job_id is None:
            raise RuntimeError("job_dir needs a job: this call is not one")
        folder = state_dir() / "jobs" / self.job_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def progress(self, **fields: Any) -> None:
        """Report progress (e.g. ``done=3, total=10``): in a job, a ``{"progress": {...}}`` event; always in status."""
        self.last_progress.update(fields)
        if self.job_id is not None:
            self.pending.append({"progress": dict(fields)})

    @property
    def orchestrator(self) -> Orchestrator:
        """The in-cluster handle: call other pools (or this one) from inside an op."""
        if self._orchestrator is None:
            raise RuntimeError("no orchestrator handle outside a pool actor")
        return self._orchestrator()
