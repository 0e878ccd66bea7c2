"""Long-running jobs, run by the coordinator: a queue per pool, an exactly-once event log, retries.

A job is a streaming op run on one actor. Each event it yields is appended
to the store with the next sequence number before any reader can see it
(group commit: the events of all running jobs are written together, one
transaction per batch, see :mod:`orchestrator.control.eventlog`); readers only
read the store. When the actor dies, the job is re-run (up to
``max_retries``) on a live actor with ``ctx.resume`` set to its last
checkpoint. A checkpoint travels in the job's stream and is stored in the
transaction of the events before it, so it marks an exact position in the event
log: events a re-run yields again up to what was already logged are dropped,
not repeated.

A restarted coordinator re-queues the unfinished jobs (``recover``) and re-runs
them from their checkpoints the same way; the previous run's stream has no
reader any more, so nothing it sends is stored. A queued job that can no longer run (its session is gone,
its pool failed) fails with the reason instead of holding up the queue, and a
job that lands on a recycling actor is re-queued. Store I/O runs off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError

from orchestrator import metrics
from orchestrator.config.schema import JobOptions
from orchestrator.control.cluster import ask
from orchestrator.control.eventlog import EventLog
from orchestrator.control.pools import ActorSlot, PoolState
from orchestrator.control.store import Store
from orchestrator.errors import (
    InvalidArguments,
    JobNotFound,
    OpNotFound,
    OrchestratorError,
    PoolNotFound,
    PoolUnavailable,
    SessionNotFound,
    WorkerCrashed,
)
from orchestrator.types import RECYCLING, Batch, Checkpoint, Failure, Final, job_key

FINISHED = ("succeeded", "failed", "cancelled")
EXPIRE_BATCH = 500  # finished jobs retention drops per store transaction
# Unread batches Ray holds per job run. Few: while the coordinator is busy, the op's events gather into
# the next batch (up to BATCH_MAX each) instead of hundreds of small objects it must read one by one.
JOB_OBJECTS = 4


class JobHost(Protocol):
    """What the job runner needs of the control plane, and nothing more."""

    @property
    def pools(self) -> Mapping[str, PoolState]:
        """The pools by name (read only)."""

    @property
    def stopping(self) -> bool:
        """True once shutdown has begun."""

    def session_slot(self, session_id: str) -> tuple[str, int] | None:
        """The pool and slot index a session is pinned to (None if it is not open)."""

    async def report_dead(self, pool_name: str, index: int, gen: int) -> None:
        """A job's actor died: have the supervisor check it now."""

    async def report_recycle(self, pool_name: str, index: int, gen: int, reason: str) -> None:
        """A job's actor said it is recycling: have the supervisor replace it."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task whose failure is logged."""


@dataclass
class Run:
    """One attempt of a job on one actor."""

    job_id: str
    pool: str
    slot: int
    gen: int
    handle: Any
    call_id: str
    cancel: bool = False
    progress: dict[str, Any] | None = None  # the latest ctx.progress fields of this run (job records show them)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class JobRunner:
    """Queues, runs, retries and cancels jobs; serves their event logs."""

    def __init__(self, host: JobHost, store: Store, options: JobOptions) -> None:
        self.host = host
        self.store = store
        self.options = options
        self.queues: dict[str, deque[tuple[str, str | None]]] = {}  # per pool: (job id, session) waiting to run
        self.runs: dict[str, Run] = {}
        self.logged: dict[str, int] = {}  # per job: the last event seq committed to the store
        self.changed = asyncio.Condition()
        self.log = EventLog(store, self._committed)

    # --------------------------------------------------------------- submit
    async def submit(
        self, pool_name: str, op: str, batch: list[dict[str, Any]], session: str | None, max_retries: int | None
    ) -> Any:
        """Queue jobs of one op, one per arguments in ``batch`` (stored in one commit); their records. Unknown
        pool/op and bad arguments are refused now, not later, and then none of the batch is queued."""
        pool = self.host.pools.get(pool_name)
        if pool is None:
            known = ", ".join(sorted(self.host.pools))
            return Failure(PoolNotFound(f"no pool {pool_name!r} (pools: {known})", pool=pool_name).to_dict())
        if pool.state in ("failed", "stopped"):
            return Failure(PoolUnavailable(f"pool is {pool.state}: {pool.reason}", pool=pool_name).to_dict())
        if pool.ops and op not in pool.ops:
            message = f"pool {pool_name!r} has no op {op!r} (ops: {', '.join(sorted(pool.ops))})"
            return Failure(OpNotFound(message, pool=pool_name, op=op).to_dict())
        if (pool.ops or {}).get(op, {}).get("pool_wide"):
            detail = [{"field": "op", "message": "a pool-wide op runs on every actor: call it, not as a job"}]
            return Failure(InvalidArguments(f"op: {op} is pool-wide", pool=pool_name, op=op, detail=detail).to_dict())
        problem = self._bad_batch(batch, max_retries)
        if problem is not None:
            field_name, message = problem
            detail = [{"field": field_name, "message": message}]
            error = InvalidArguments(f"{field_name}: {message}", pool=pool_name, op=op, detail=detail)
            return Failure(error.to_dict())
        pinned = self.host.session_slot(session) if session is not None else None
        if session is not None and (pinned is None or pinned[0] != pool_name):
            return Failure(
                SessionNotFound(f"no open session {session} in pool {pool_name!r}", pool=pool_name).to_dict()
            )
        ready = [s for s in pool.slots if s.state == "ready"]
        if ready:
            problem = await ask(ready[0].handle.validate.remote(op, batch))
            if problem is not None:
                return problem
        now = time.time()
        retries = self.options.max_retries if max_retries is None else max_retries
        ids = [uuid.uuid4().hex for _ in batch]
        jobs: list[dict[str, Any]] = [
            {
                "id": job_id,
                "pool": pool_name,
                "op": op,
                "args": args,
                "session": session,
                "status": "queued",
                "max_retries": retries,
                "created": now + i * 1e-6,  # newest first lists a batch in reverse order of submission
            }
            for i, (job_id, args) in enumerate(zip(ids, batch, strict=True))
        ]
        await asyncio.to_thread(self.store.put_jobs, jobs)
        queue = self.queues.setdefault(pool_name, deque())
        for job_id in ids:
            self.logged[job_id] = 0
            queue.append((job_id, session))
        self.dispatch()
        return [self.get(job_id) for job_id in ids]

    def _bad_batch(self, batch: list[dict[str, Any]], max_retries: int | None) -> tuple[str, str] | None:
        """What is wrong with a batch's size or its ``max_retries``, as (field, message)."""
        if not 1 <= len(batch) <= self.options.batch_limit:
            return "args", f"a batch holds 1 to {self.options.batch_limit} jobs (jobs.batch_limit), got {len(batch)}"
        limit = self.options.max_retries_limit
        if max_retries is not None and not 0 <= max_retries <= limit:
            return "max_retries", f"must be between 0 and {limit} (jobs.max_retries_limit), got {max_retries}"
        return None

    # -------------------------------------------------------------- running
    def dispatch(self) -> None:
        """Start queued jobs on actors with a free slot (called on submit, finish and every tick).

        A job waiting for its session's actor does not hold up the jobs behind it; a job whose session
        is gone fails now, naming it."""
        for pool_name, queue in self.queues.items():
            pool = self.host.pools.get(pool_name)
            if pool is not None and pool.state == "failed":
                self._fail_queued(queue, PoolUnavailable(f"pool is {pool.state}: {pool.reason}", pool=pool.name))
            if pool is None or pool.state != "running":
                continue
            waiting: deque[tuple[str, str | None]] = deque()
            stateless_full = False
            while queue:
                job_id, session = entry = queue.popleft()
                if session is not None and self.host.session_slot(session) is None:
                    message = f"job {job_id}: its session {session} is no longer open (closed, expired or lost)"
                    self._fail_queued(deque([entry]), SessionNotFound(message, pool=pool_name))
                    continue
                slot = None if session is None and stateless_full else self._free_slot(pool, session)
                if slot is None:
                    stateless_full = stateless_full or session is None
                    waiting.append(entry)
                    continue
                job = self.store.get_job(job_id)
                if job is not None and job["status"] not in FINISHED:
                    self._start(pool, slot, job)
            queue.extend(waiting)
        self._gauge()

    def _gauge(self) -> None:
        """The jobs gauge: queued and running, per pool."""
        for name in self.host.pools:
            running = sum(1 for run in self.runs.values() if run.pool == name)
            metrics.jobs().set(len(self.queues.get(name, ())), tags={"pool": name, "status": "queued"})
            metrics.jobs().set(running, tags={"pool": name, "status": "running"})

    def _fail_queued(self, queue: deque[tuple[str, str | None]], error: OrchestratorError) -> None:
        """Jobs that will never run fail now, with why, instead of waiting forever."""
        while queue:
            job_id, _ = queue.popleft()
            job = self.store.get_job(job_id)
            if job is not None and job["status"] not in FINISHED:
                self.store.update_job(job_id, status="failed", finished=time.time(), error=error.to_dict())
                self.logged.pop(job_id, None)
        self.host.spawn(self._notify())

    def _free_slot(self, pool: PoolState, session: str | None) -> ActorSlot | None:
        busy: dict[int, int] = {}
        for run in self.runs.values():
            if run.pool == pool.name:
                busy[run.slot] = busy.get(run.slot, 0) + 1
        if session is not None:
            pinned = self.host.session_slot(session)
            slots = [pool.slots[pinned[1]]] if pinned else []
        else:
            slots = pool.slots
        capacity = pool.spec.limits.concurrency
        free = [s for s in slots if s.state == "ready" and busy.get(s.index, 0) < capacity]
        return min(free, key=lambda s: busy.get(s.index, 0), default=None)

    def recover(self) -> int:
        """Queue the unfinished jobs a previous coordinator left in the store (resumed from checkpoints)."""
        unfinished = self.store.unfinished_jobs()
        for job in unfinished:
            if job["pool"] in self.host.pools:
                self.store.update_job(job["id"], status="retrying" if job["attempts"] else "queued")
                self.logged[job["id"]] = job["events"]
                self.queues.setdefault(job["pool"], deque()).append((job["id"], job["session"]))
        return len(unfinished)

    def _start(self, pool: PoolState, slot: ActorSlot, job: dict[str, Any]) -> None:
        run = Run(job["id"], pool.name, slot.index, slot.gen, slot.handle, uuid.uuid4().hex)
        self.runs[job["id"]] = run
        run.task = asyncio.create_task(self._run(pool, run, job))

    async def _run(self, pool: PoolState, run: Run, job: dict[str, Any]) -> None:
        job_id = job["id"]
        # A job that never ran has no checkpoint: its first run reads nothing.
        checkpoint = await asyncio.to_thread(self.store.get_checkpoint, job_key(job_id)) if job["attempts"] else None
        resume_blob, base = pickle.loads(checkpoint) if checkpoint is not None else (None, 0)
        logged = self.logged.setdefault(job_id, job["events"])
        attempts = job["attempts"] + 1
        started = job["started"] or time.time()
        # Stored with the run's first events (or its outcome): jobs starting together share one commit. A crash
        # before it commits re-runs the job as if this attempt never started.
        await self.log.update(job_id, status="running", attempts=attempts, started=started)
        request = (job["op"], job["args"], job["session"], None, "jobs", run.call_id)
        method = run.handle.stream.options(
            num_returns="streaming",
            name=f"job:{run.pool}.{job['op']}:{job_id[:8]}",  # Ray's task list names the job, not `stream`
            _generator_backpressure_num_objects=JOB_OBJECTS,
        )
        outcome: Any = None
        position = base
        try:
            async for ref in method.remote(request, False, (job_id, resume_blob)):
                sent = await ref
                if isinstance(sent, Final | Failure):
                    outcome = sent
                    break
                events: list[tuple[str, int, Any]] = []
                latest: tuple[int, bytes] | None = None  # the batch's last checkpoint: it supersedes the others
                for item in sent if isinstance(sent, Batch) else (sent,):  # a host sends a job's events in batches
                    if isinstance(item, Final | Failure):  # the outcome, after the batch's events
                        outcome = item
                        break
                    if isinstance(item, Checkpoint):
                        latest = (position, item.blob)
                        continue
                    position += 1
                    if isinstance(item, dict) and isinstance(item.get("progress"), dict):
                        run.progress = {**(run.progress or {}), **item["progress"]}
                    if position > logged:  # else re-yielded after a resume: already in the log
                        events.append((job_id, position, item))
                        logged = position
                if events:  # committed with others' events, in order
                    await self.log.add(events)
                    metrics.job_events().inc(len(events), tags={"pool": run.pool})
                if latest is not None:  # in the transaction of the events before it, or a later one
                    await self.log.checkpoint(job_id, *latest)
                    metrics.checkpoint_bytes().inc(len(latest[1]), tags={"pool": run.pool, "kind": "job"})
                if outcome is not None:
                    break
        except RayActorError as exc:
            outcome = exc
        except Exception as exc:  # e.g. an event that cannot be pickled: fail the job, never the loop
            outcome = Failure(WorkerCrashed(f"job runner error: {exc}", pool=run.pool, op=job["op"]).to_dict())
        finally:
            self.runs.pop(job_id, None)
        await self._finish(pool, run, job, attempts, outcome)

    async def _committed(self, last: dict[str, int]) -> None:
        """A batch of events is in the store: readers may see them, checkpoints after them may be stored."""
        for job_id, seq in last.items():
            self.logged[job_id] = max(seq, self.logged.get(job_id, 0))
        await self._notify()

    async def _finish(self, pool: PoolState, run: Run, job: dict[str, Any], attempts: int, outcome: Any) -> None:
        job_id = job["id"]
        now = time.time()
        again = False  # queued to run again
        if self.host.stopping and not run.cancel and not isinstance(outcome, Final | Failure):
            # Shut down under it: left queued, it resumes from its checkpoint when an orchestrator
            # starts again on this state_dir (JobRunner.recover).
            await self.log.written(await self.log.update(job_id, status="queued"))
            await self._notify()
            return
        if isinstance(outcome, Failure) and outcome.code == RECYCLING and not run.cancel:
            # It landed on an actor that is draining: it never started. Run it again on the replacement.
            fields: dict[str, Any] = {"status": "queued", "attempts": attempts - 1}
            again = True
            await self.host.report_recycle(pool.name, run.slot, run.gen, str(outcome.error.get("message")))
        elif run.cancel:
            fields = {"status": "cancelled", "finished": now}
        elif isinstance(outcome, Final):
            fields = {"status": "succeeded", "finished": now, "result": outcome.value}
        elif isinstance(outcome, Failure):
            fields = {"status": "failed", "finished": now, "error": outcome.error}
        elif isinstance(outcome, RayActorError) and attempts <= job["max_retries"]:
            fields, again = {"status": "retrying"}, True
            pool.event("job_retry", None, f"job {job_id}: actor died; re-run {attempts}/{job['max_retries']}")
            await self.host.report_dead(pool.name, run.slot, run.gen)
        else:
            why = f"the actor died (after {attempts} attempt(s))" if outcome is not None else "the stream ended early"
            error = WorkerCrashed(f"job {job_id}: {why}", pool=pool.name, op=job["op"])
            fields = {"status": "failed", "finished": now, "error": error.to_dict()}
        # After every event of the run, in one synced commit with other jobs' outcomes: readers see the job
        # finished only once its result is stored.
        await self.log.written(await self.log.update(job_id, **fields))
        if again:
            self.queues.setdefault(pool.name, deque()).appendleft((job_id, job["session"]))
        elif fields["status"] in FINISHED:
            self.logged.pop(job_id, None)  # readers see it finished from the store
            metrics.jobs_finished().inc(tags={"pool": pool.name, "status": fields["status"]})
        await self._notify()
        self.dispatch()

    # --------------------------------------------------------------- cancel
    async def cancel(self, job_id: str) -> Any:
        """Cooperative cancel (``ctx.cancelled``), then a hard kill after the grace period."""
        job = self.store.get_job(job_id)
        if job is None:
            return Failure(JobNotFound(f"no job {job_id}").to_dict())
        if job["status"] in FINISHED:
            return {
                "id": job_id,
                "status": job["status"],
                "cancelled": False,
                "message": f"job already {job['status']}",
            }
        run = self.runs.get(job_id)
        if run is None:  # queued or waiting to be retried
            self.store.update_job(job_id, status="cancelled", finished=time.time())
            self.logged.pop(job_id, None)
            await self._notify()
            return {"id": job_id, "status": "cancelled", "cancelled": True, "message": "cancelled before it ran"}
        run.cancel = True
        run.handle.cancel.remote(run.call_id)
        self.host.spawn(self._kill_after_grace(run))
        return {"id": job_id, "status": "running", "cancelled": True, "message": "cancelling: the op was asked to stop"}

    async def _kill_after_grace(self, run: Run) -> None:
        if run.task is None:
            return
        done, _ = await asyncio.wait({run.task}, timeout=self.options.cancel_grace_s)
        if not done:
            ray.kill(run.handle, no_restart=True)  # the supervisor restarts the actor

    # --------------------------------------------------------------- reading
    def get(self, job_id: str) -> Any:
        """A job's record (without its events), or job_not_found; a running one names its actor and latest progress."""
        job = self.store.get_job(job_id)
        if job is None:
            return Failure(JobNotFound(f"no job {job_id}").to_dict())
        run = self.runs.get(job_id)
        if run is not None and job["status"] in ("queued", "retrying"):  # its start is not committed yet
            job["status"] = "running"
        job["actor"] = self.host.pools[run.pool].slots[run.slot].name if run else None
        job["progress"] = run.progress if run else None
        return job

    def list(
        self,
        pool: str | None = None,
        status: str | None = None,
        limit: int = 1000,
        after: str | None = None,
        op: str | None = None,
    ) -> Any:
        """Jobs, newest first; after job ``after`` when given (a Failure naming ``after`` if there is no such job)."""
        try:
            return self.store.list_jobs(pool, status, limit, after, op)
        except KeyError:
            message = f"no job {after} to list after (a job id from the previous page)"
            error = InvalidArguments(f"after: {message}", detail=[{"field": "after", "message": message}])
            return Failure(error.to_dict())

    async def events(self, job_id: str, after: int = 0, wait_s: float = 0.0, limit: int = 1000) -> Any:
        """Logged events after ``after`` (waiting up to ``wait_s`` for one), and whether the job is over.
        (Reads run off the loop, on the store's reading connection.)"""
        job, events = await asyncio.to_thread(self._read, job_id, after, limit)
        if job is None:
            return Failure(JobNotFound(f"no job {job_id}").to_dict())
        if not events and wait_s > 0 and job["status"] not in FINISHED:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(lambda: self._moved(job_id, after)), wait_s)
            again, events = await asyncio.to_thread(self._read, job_id, after, limit)
            job = again or job
        finished = job["status"] in FINISHED and (not events or events[-1][0] >= job["events"])
        return {"events": events, "status": job["status"], "finished": finished}

    async def wait(self, job_ids: Sequence[str], wait_s: float) -> Any:
        """The records of ``job_ids`` once every one has finished, or after ``wait_s`` (whatever they are then).
        Waiting costs no database read: a job is unfinished exactly while ``logged`` holds it."""
        unfinished = {job_id for job_id in job_ids if job_id in self.logged}

        def finished() -> bool:
            unfinished.intersection_update(self.logged)
            return not unfinished

        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(finished), wait_s)
        records = [self.get(job_id) for job_id in job_ids]
        return next((r for r in records if isinstance(r, Failure)), records)

    def _read(self, job_id: str, after: int, limit: int) -> tuple[dict[str, Any] | None, Any]:
        job = self.store.get_job(job_id)
        return job, (self.store.events(job_id, after, limit) if job is not None else [])

    def _moved(self, job_id: str, after: int) -> bool:
        # In memory: a reader woken by another job's event must not cost a database read.
        return job_id not in self.logged or self.logged[job_id] > after

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs by pool and status."""
        return self.store.count_jobs()

    async def expire(self) -> int:
        """Retention: forget finished jobs older than ``jobs.retention_s``, ``EXPIRE_BATCH`` per transaction on a
        worker thread, yielding between batches: the coordinator keeps answering while a large history goes."""
        cutoff, dropped = time.time() - self.options.retention_s, 0
        while True:
            n = await asyncio.to_thread(self.store.delete_jobs_before, cutoff, EXPIRE_BATCH)
            dropped += n
            if n < EXPIRE_BATCH:
                return dropped
            await asyncio.sleep(0)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
