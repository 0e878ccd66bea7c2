"""The in-process handles: ``connect()``, ``Orchestrator``, ``Session`` and ``Job``; ``current()``.

The same ``Orchestrator`` handle is what an op gets as ``ctx.orchestrator``,
so workers call other pools exactly as a driver script does. (``start()``,
which also launches the control plane, is ``orchestrator.control.launch``'s.)
``current()`` is this process's handle, for code that is not given one
(``orchestrator.dspy``'s ``PoolLM`` and ``PoolRetriever``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from orchestrator.dataplane import programs as program_calls
from orchestrator.dataplane.programs import POOL as PROGRAMS
from orchestrator.dataplane.router import Router, unwrap
from orchestrator.dataplane.stream import Stream
from orchestrator.errors import JobCancelled, OrchestratorError, Overloaded, PoolUnavailable, Timeout, WorkerCrashed
from orchestrator.types import COORDINATOR_NAME, RECYCLING, Failure

JOB_POLL_S = 5.0  # long-poll length when following a job

# This process's handle (see current()): a driver's latest start()/connect(), and a pool actor's own, built lazily.
_driver_handle: Orchestrator | None = None
_actor_handle: Callable[[], Orchestrator] | None = None


def current() -> Orchestrator:
    """This process's orchestrator handle: in a driver, the one ``start()`` or ``connect()`` returned last (until
    it is shut down or closed); inside a pool actor, the one its ops get as ``ctx.orchestrator``.

    Code that may run before a handle exists (a ``dspy.Module``'s ``__init__``) calls this when it needs the
    handle, not when it is built. Raises pool_unavailable when the process has none.
    """
    if _driver_handle is not None:
        return _driver_handle
    if _actor_handle is not None:
        return _actor_handle()
    raise PoolUnavailable(
        "this process has no orchestrator handle: call orchestrator.start() or orchestrator.connect() first "
        "(or pass the handle)",
        retryable=False,
    )


def use_in_actor(factory: Callable[[], Orchestrator]) -> None:
    """A pool actor's handle for ``current()`` (its host's ``ctx.orchestrator`` factory: built on first use)."""
    global _actor_handle
    _actor_handle = factory


def _use_in_driver(handle: Orchestrator | None, replacing: Orchestrator | None = None) -> None:
    """Make ``handle`` the driver's current one (None: forget ``replacing`` if it is the current one)."""
    global _driver_handle
    if handle is not None or _driver_handle is replacing:
        _driver_handle = handle


def connect(address: str | None = "auto", namespace: str = "orchestrator") -> Orchestrator:
    """Attach to a running orchestrator on an existing Ray cluster.

    A local cluster started with Ray's token authentication (the default when
    ``~/.ray/auth_token`` exists) is joined with that token, as Ray does for
    the process that started it.
    """
    if not ray.is_initialized():
        _token_auth_if_available()
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=namespace)
    except ValueError:
        raise PoolUnavailable(f"no orchestrator is running in Ray namespace {namespace!r}") from None
    return Orchestrator(coordinator, namespace, owns_ray=False)


def _token_auth_if_available() -> None:
    """Use Ray's token (``~/.ray/auth_token``) when RAY_AUTH_MODE is unset, as a local ``ray.init`` does."""
    if "RAY_AUTH_MODE" in os.environ or not Path.home().joinpath(".ray", "auth_token").exists():
        return
    try:  # Ray's own switch: sets the mode for this process and its children and refreshes its config
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except ImportError:  # another Ray version: the environment variable is what it reads
        os.environ["RAY_AUTH_MODE"] = "token"


class Orchestrator:
    """A handle on a running orchestrator: pools, calls, streams, sessions."""

    def __init__(self, coordinator: Any, namespace: str, owns_ray: bool = False, local_host: Any = None) -> None:
        self.namespace = namespace
        self.owns_ray = owns_ray
        self.router = Router(coordinator, local_host=local_host, namespace=namespace)
        if local_host is None:  # start() or connect(): this driver's handle from now on (an actor's is its own)
            _use_in_driver(self)

    @property
    def coordinator(self) -> Any:
        """The coordinator's handle (the router finds it again by name if a new one was started)."""
        return self.router.coordinator

    @classmethod
    def in_cluster(cls, namespace: str, coordinator: str = COORDINATOR_NAME, local_host: Any = None) -> Orchestrator:
        """The handle an op gets as ``ctx.orchestrator`` (Ray is already connected)."""
        return cls(ray.get_actor(coordinator, namespace=namespace), namespace, local_host=local_host)

    # -------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Every pool with its actors, sessions, counters and recent events."""
        return dict(ray.get(self.coordinator.status.remote()))

    def pools(self) -> list[str]:
        """The configured pool names."""
        return sorted(self.status())

    def restart_pool(self, name: str) -> dict[str, Any]:
        """Start a failed or stopped pool again; ``{"restarted": bool, "message": ...}``."""
        return dict(unwrap(ray.get(self.coordinator.restart_pool.remote(name))))

    def sessions(
        self, pool: str | None = None, limit: int | None = None, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Open sessions, newest first (of one pool, or all): at most ``limit``, after session ``after``."""
        return list(unwrap(ray.get(self.coordinator.list_sessions.remote(pool, limit, after))))

    # --------------------------------------------------------------- calls
    def call(self, pool: str, op: str, /, _timeout: float | None = None, **args: Any) -> Any:
        """Run ``op`` on the least-loaded actor of ``pool``; returns its result."""
        return self.router.run(self.router.call_steps(pool, op, args, timeout=_timeout))

    async def acall(self, pool: str, op: str, /, _timeout: float | None = None, **args: Any) -> Any:
        """``call`` for asyncio code."""
        return await self.router.arun(self.router.call_steps(pool, op, args, timeout=_timeout))

    def call_many(self, pool: str, op: str, calls: list[dict[str, Any]]) -> list[Any]:
        """Run many calls of one op concurrently; results in order. The first error raises.

        Calls are pipelined within the pool's bound on outstanding calls, so a
        batch larger than the queue waits for room instead of being refused.
        Many calls travel in one Ray task (``WorkerHost.call_batch``; each is
        still admitted, validated, run and measured on its own): Ray's cost per
        task is paid per chunk, not per call, while every actor still gets work.
        """
        router = self.router
        if router.check_op(pool, op).get("pool_wide"):
            return [self.call(pool, op, **args) for args in calls]
        results: list[Any] = [None] * len(calls)
        inflight: dict[Any, tuple[list[int], dict[str, Any]]] = {}
        pending = list(enumerate(calls))[::-1]
        try:
            while pending or inflight:
                while pending:
                    try:
                        actor = router.pick(pool, set())
                    except Overloaded:
                        if not inflight:
                            raise
                        break  # full: collect some answers first
                    if not isinstance(actor, dict):  # inline (own pool) or restarting: the one-call path
                        index, args = pending.pop()
                        results[index] = self.call(pool, op, **args)
                        continue
                    chunk = [pending.pop() for _ in range(router.chunk_size(pool, len(pending)))]
                    for _ in chunk:
                        router.acquire(pool, actor)
                    requests = [(op, args, None, None, router.caller, "") for _, args in chunk]
                    inflight[actor["handle"].call_batch.remote(requests)] = ([index for index, _ in chunk], actor)
                if not inflight:
                    continue
                # A full window waits for half of it (the other half keeps the actors busy); the last ones
                # are waited for together: one ray.wait per many answers, not one or two per call.
                need = max(1, len(inflight) // 2) if pending else len(inflight)
                done, _ = ray.wait(list(inflight), num_returns=need)
                try:
                    answers: list[Any] | None = ray.get(done)  # one get for all that are done
                except RayActorError:
                    answers = None  # one died: find which, one by one
                for i, ref in enumerate(done):
                    indexes, actor = inflight.pop(ref)
                    for _ in indexes:
                        router.release(pool, actor)
                    try:
                        values = answers[i] if answers is not None else ray.get(ref)
                    except RayActorError as exc:
                        where = f"calls {indexes[0]}..{indexes[-1]}" if len(indexes) > 1 else f"call {indexes[0]}"
                        raise WorkerCrashed(f"the actor running {where} died: {exc}", pool=pool, op=op) from None
                    for index, value in zip(indexes, values, strict=True):
                        if isinstance(value, Failure) and value.code == RECYCLING:
                            value = self.call(pool, op, **calls[index])
                        results[index] = unwrap(value)
        finally:
            for indexes, actor in inflight.values():
                for _ in indexes:
                    router.release(pool, actor)
        return results

    def stream(self, pool: str, op: str, /, **args: Any) -> Stream:
        """Iterate the events of a streaming op; ``.result`` holds its return value at the end."""
        return Stream(self.router, pool, op, args)

    def session(self, pool: str, ttl_s: float | None = None) -> Session:
        """Open a session pinned to one actor of ``pool`` (a context manager that closes it)."""
        self.router.pool(pool)
        return Session(self, unwrap(ray.get(self.coordinator.create_session.remote(pool, ttl_s))))

    def attach(self, session_id: str) -> Session:
        """A handle on an open session by its id (e.g. after a restart, or from another process).

        Raises session_lost if it could not be restored, session_not_found if there is no such session."""
        return Session(self, unwrap(ray.get(self.coordinator.get_session.remote(session_id))))

    # ----------------------------------------------------------------- jobs
    def submit(
        self,
        pool: str,
        op: str,
        /,
        _session: Session | str | None = None,
        _max_retries: int | None = None,
        **args: Any,
    ) -> Job:
        """Queue ``op`` as a long-running job; returns its handle at once."""
        session = _session.id if isinstance(_session, Session) else _session
        record = unwrap(ray.get(self.coordinator.submit_job.remote(pool, op, args, session, _max_retries)))
        return Job(self, record["id"])

    def submit_many(
        self,
        pool: str,
        op: str,
        batch: list[dict[str, Any]],
        /,
        _session: Session | str | None = None,
        _max_retries: int | None = None,
    ) -> list[Job]:
        """Queue ``op`` once per arguments in ``batch`` (stored in one commit, run as slots free up); their
        handles, in order. A bad argument in any of them refuses the whole batch, naming it (``args[3].n``)."""
        session = _session.id if isinstance(_session, Session) else _session
        submitted = self.coordinator.submit_jobs.remote(pool, op, list(batch), session, _max_retries)
        return [Job(self, record["id"]) for record in unwrap(ray.get(submitted))]

    def wait(self, jobs: list[Job], timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait until every one of ``jobs`` has finished (one long poll for all of them, as ``ray.get`` of many
        refs); their records, in order: ``status``, and ``result`` or ``error``. Timeout if some are still
        running after ``timeout`` seconds."""
        ids = [job.id for job in jobs]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = JOB_POLL_S if deadline is None else deadline - time.monotonic()
            records = unwrap(ray.get(self.coordinator.wait_jobs.remote(ids, max(0.0, min(left, JOB_POLL_S)))))
            unfinished = [r["id"] for r in records if r["status"] not in ("succeeded", "failed", "cancelled")]
            if not unfinished:
                return [dict(r) for r in records]
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"{len(unfinished)} of {len(ids)} jobs still unfinished after {timeout:g}s")

    def job(self, job_id: str) -> Job:
        """The handle of an existing job (job_not_found if there is none)."""
        unwrap(ray.get(self.coordinator.get_job.remote(job_id)))
        return Job(self, job_id)

    def jobs(
        self, pool: str | None = None, status: str | None = None, limit: int = 1000, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally of one pool and/or status: at most ``limit``, after job ``after``
        (the last id of the previous page) when given."""
        return list(unwrap(ray.get(self.coordinator.list_jobs.remote(pool, status, limit, after))))

    # ---------------------------------------------------------------- files
    def upload_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store a file (OpenAI's Files API); its file object ``{"id": "file-…", "object": "file", ...}``.

        ``purpose`` is one of OpenAI's (``fine-tune``, ``batch``, ``assistants``, ``user_data``, ``evals``,
        ``vision``); a ``fine-tune`` file must be chat or prompt/completion JSONL (the first bad line is named).
        """
        return dict(unwrap(ray.get(self.coordinator.put_file.remote(filename, purpose, data))))

    def files(self, purpose: str | None = None, limit: int = -1, after: str | None = None) -> list[dict[str, Any]]:
        """Uploaded files' objects, newest first (of one purpose when given): at most ``limit`` (-1: all), after
        file ``after`` (the last id of the previous page)."""
        return list(unwrap(ray.get(self.coordinator.list_files.remote(purpose, limit, after))))

    def file(self, file_id: str) -> dict[str, Any]:
        """One file's object (file_not_found if there is none)."""
        return dict(unwrap(ray.get(self.coordinator.get_file.remote(file_id))))

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes (file_not_found if there is none)."""
        return bytes(unwrap(ray.get(self.coordinator.file_content.remote(file_id))))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """Delete a file; ``{"id", "object": "file", "deleted": True}`` (file_not_found if there is none)."""
        return dict(unwrap(ray.get(self.coordinator.delete_file.remote(file_id))))

    # ------------------------------------------------------------- programs
    def register_program(
        self,
        name: str,
        *,
        program: dict[str, Any] | None = None,
        job_id: str | None = None,
        model: str | dict[str, Any] | None = None,
        pool: str = PROGRAMS,
    ) -> dict[str, Any]:
        """Register a new version of program ``name`` from ``program`` (``{"class", "init", "state"}``) or a
        succeeded optimize job; ``model`` overrides the model it calls. ``{"name", "version", "live"}``."""
        answer = self.coordinator.register_program.remote(pool, name, program, job_id, model)
        return dict(unwrap(ray.get(answer)))

    def programs(self) -> list[dict[str, Any]]:
        """Every registered program: ``{"name", "live", "versions", "latest", "created"}``."""
        return list(ray.get(self.coordinator.list_programs.remote()))

    def program(self, name: str, states: bool = False) -> dict[str, Any]:
        """One program's versions and its live one (program_not_found if there is none)."""
        return dict(unwrap(ray.get(self.coordinator.get_program.remote(name, states))))

    def run_program(
        self,
        name: str,
        inputs: dict[str, Any],
        version: int | None = None,
        trace: bool = False,
        pool: str = PROGRAMS,
    ) -> dict[str, Any]:
        """Run ``name`` (live, or ``version``) on ``forward``'s ``inputs``: ``{"name", "version", "outputs"}``
        (and ``trace``: each predictor's inputs and outputs)."""
        return dict(self.call(pool, "run", name=name, inputs=inputs, version=version, trace=trace))

    def batch_program(
        self, name: str, inputs: list[dict[str, Any]], version: int | None = None, pool: str = PROGRAMS
    ) -> dict[str, Any]:
        """Run many inputs over the pool's actors (one chunk each): ``{"name", "version", "outputs": [...]}``."""
        record = program_calls.pick_version(self.program(name), version)
        calls = program_calls.batch_calls(record, name, inputs, len(self.router.pool(pool)["actors"]))
        with ThreadPoolExecutor(max_workers=len(calls)) as chunks:
            answers = list(chunks.map(lambda args: self.call(pool, "run_many", **args), calls))
        return program_calls.batch_answer(record, name, answers)

    def stream_program(
        self, name: str, inputs: dict[str, Any], version: int | None = None, pool: str = PROGRAMS
    ) -> Stream:
        """A run as a stream: a ``{"status", "module"}`` event as each module starts; ``.result`` the outputs."""
        return self.stream(pool, "run_stream", name=name, inputs=inputs, version=version)

    def promote_program(self, name: str, version: int, pool: str = PROGRAMS) -> dict[str, Any]:
        """Make ``version`` live (rollback: promote an older one): ``{"name", "live", "previous"}``."""
        return dict(unwrap(ray.get(self.coordinator.promote_program.remote(pool, name, version))))

    # ------------------------------------------------------------ shutdown
    def shutdown(self, drain_s: float = 30.0) -> dict[str, Any]:
        """Drain calls, checkpoint sessions, stop every actor and the coordinator (and embedded Ray)."""
        _use_in_driver(None, replacing=self)
        self.router.close()
        summary = dict(ray.get(self.coordinator.shutdown.remote(drain_s)))
        ray.kill(self.coordinator)
        if self.owns_ray:
            ray.shutdown()
        return summary

    def close(self) -> None:
        """Detach this handle (the orchestrator keeps running)."""
        _use_in_driver(None, replacing=self)
        self.router.close()


class Session:
    """A session pinned to one actor; its calls run in order. Close it, or use ``with``."""

    def __init__(self, orchestrator: Orchestrator, record: dict[str, Any]) -> None:
        self.orchestrator = orchestrator
        self.id: str = record["id"]
        self.pool: str = record["pool"]
        self.slot: int = record["slot"]
        self.lock = threading.Lock()
        self.seqs = itertools.count()
        self.closed = False

    def call(self, op: str, /, _timeout: float | None = None, **args: Any) -> Any:
        """Run ``op`` with this session's state."""
        router = self.orchestrator.router
        return router.run(router.call_steps(self.pool, op, args, session=self, timeout=_timeout))

    async def acall(self, op: str, /, _timeout: float | None = None, **args: Any) -> Any:
        """``call`` for asyncio code."""
        router = self.orchestrator.router
        return await router.arun(router.call_steps(self.pool, op, args, session=self, timeout=_timeout))

    def stream(self, op: str, /, **args: Any) -> Stream:
        """Stream a streaming op's events with this session's state."""
        return Stream(self.orchestrator.router, self.pool, op, args, session=self)

    def close(self) -> None:
        """Close the session and drop its state (idempotent)."""
        if not self.closed:
            self.closed = True
            ray.get(self.orchestrator.coordinator.close_session.remote(self.id))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Job:
    """A handle on a long-running job: ``status()``, ``events()``, ``result(timeout)``, ``cancel()``."""

    def __init__(self, orchestrator: Orchestrator, job_id: str) -> None:
        self.orchestrator = orchestrator
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> dict[str, Any]:
        """The job's record: status (queued|running|retrying|succeeded|failed|cancelled), attempts, events..."""
        return dict(unwrap(ray.get(self.orchestrator.coordinator.get_job.remote(self.id))))

    def events(self, after: int = 0, follow: bool = True) -> Iterator[tuple[int, Any]]:
        """``(seq, event)`` pairs from the log after ``after``; with ``follow``, until the job ends."""
        coordinator = self.orchestrator.coordinator
        while True:
            batch = unwrap(ray.get(coordinator.job_events.remote(self.id, after, JOB_POLL_S if follow else 0.0)))
            for seq, event in batch["events"]:
                after = seq
                yield seq, event
            if batch["finished"] or (not follow and not batch["events"]):
                return

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job; its result, or its error raised (JobCancelled if cancelled, Timeout if not done)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        coordinator = self.orchestrator.coordinator
        while True:
            record = self.status()
            if record["status"] in ("succeeded", "failed", "cancelled"):
                return job_outcome(record)
            left = JOB_POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"job {self.id} is still {record['status']} after {timeout:g}s")
            ray.get(coordinator.job_events.remote(self.id, record["events"], min(left, JOB_POLL_S)))

    def cancel(self) -> dict[str, Any]:
        """Ask the op to stop (``ctx.cancelled``); it is killed after the grace period. A finished job: a no-op."""
        return dict(unwrap(ray.get(self.orchestrator.coordinator.cancel_job.remote(self.id))))


def job_outcome(record: dict[str, Any]) -> Any:
    """A finished job's result, or its error raised."""
    if record["status"] == "succeeded":
        return record["result"]
    if record["status"] == "cancelled":
        raise JobCancelled(f"job {record['id']} was cancelled", pool=record["pool"], op=record["op"])
    raise OrchestratorError.from_dict(record["error"] or {"code": "op_failed", "message": "job failed"})
