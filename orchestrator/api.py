"""The in-process Python API: ``start()``, ``connect()`` and the Orchestrator handle.

The same handle is what an op gets as ``ctx.orchestrator``, so workers call
other pools exactly as a driver script does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import ray
from ray.exceptions import RayActorError

from orchestrator.config import Config, load_config
from orchestrator.coordinator import COORDINATOR_NAME, coordinator_class
from orchestrator.envs import check_py_executable, requirements
from orchestrator.errors import JobCancelled, OrchestratorError, Overloaded, PoolUnavailable, Timeout, WorkerCrashed
from orchestrator.host import RECYCLING
from orchestrator.router import LOCAL, WAIT_FOR_ACTOR_S, Router, unwrap
from orchestrator.types import Failure, Final
from orchestrator.worker import load_worker_class

JOB_POLL_S = 5.0  # long-poll length when following a job


def start(
    config: str | Path | Config = "pools.yaml",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    **ray_init: Any,
) -> Orchestrator:
    """Start Ray (embedded unless ``ray.address`` is set), the coordinator and every pool.

    Returns once each actor is ready or pending for resources. A bad pool
    (unimportable worker, bad options, failing constructor, env build error)
    raises InvalidConfig naming the pool, and nothing is left running.
    ``on_progress`` gets the pools' status about twice a second while they start.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    for name, pool in cfg.pools.items():
        if pool.py_executable is not None:
            check_py_executable(pool.py_executable, name)
        elif pool.env_manager != "none" and not requirements(cfg.env_dir(name)):
            load_worker_class(pool.worker, name, pool.options)  # same env as ours: fail fast
    owns_ray = not ray.is_initialized()
    if owns_ray:
        kwargs: dict[str, Any] = {"namespace": cfg.ray.namespace, "log_to_driver": True}
        if cfg.ray.address:
            kwargs["address"] = cfg.ray.address
        else:
            kwargs.update(dashboard_host=cfg.ray.dashboard_host, include_dashboard=True)
            if cfg.ray.num_cpus is not None:
                kwargs["num_cpus"] = cfg.ray.num_cpus
            if cfg.ray.num_gpus is not None:
                kwargs["num_gpus"] = cfg.ray.num_gpus
        ray.init(**{**kwargs, **ray_init})
    coordinator = (
        coordinator_class()
        .options(name=COORDINATOR_NAME, namespace=cfg.ray.namespace, lifetime="detached")
        .remote(cfg.model_dump())
    )
    applying = coordinator.apply.remote()
    while on_progress is not None and not ray.wait([applying], timeout=0.5)[0]:
        on_progress(ray.get(coordinator.status.remote()))
    outcome = ray.get(applying)
    if isinstance(outcome, Failure):
        ray.get(coordinator.shutdown.remote(0.0))
        ray.kill(coordinator)
        if owns_ray:
            ray.shutdown()
        unwrap(outcome)
    return Orchestrator(coordinator, cfg.ray.namespace, owns_ray=owns_ray)


def connect(address: str | None = "auto", namespace: str = "orchestrator") -> Orchestrator:
    """Attach to a running orchestrator on an existing Ray cluster."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=namespace)
    except ValueError:
        raise PoolUnavailable(f"no orchestrator is running in Ray namespace {namespace!r}") from None
    return Orchestrator(coordinator, namespace, owns_ray=False)


class Orchestrator:
    """A handle on a running orchestrator: pools, calls, streams, sessions."""

    def __init__(self, coordinator: Any, namespace: str, owns_ray: bool = False, local_host: Any = None) -> None:
        self.coordinator = coordinator
        self.namespace = namespace
        self.owns_ray = owns_ray
        self.router = Router(coordinator, local_host=local_host)

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

    def sessions(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Open sessions (of one pool, or all)."""
        return list(ray.get(self.coordinator.list_sessions.remote(pool)))

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
        """
        router = self.router
        router.check_op(pool, op)
        results: list[Any] = [None] * len(calls)
        inflight: dict[Any, tuple[int, dict[str, Any]]] = {}
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
                    index, args = pending.pop()
                    if not isinstance(actor, dict):  # inline (own pool) or restarting: the one-call path
                        results[index] = self.call(pool, op, **args)
                        continue
                    router.acquire(pool, actor)
                    ref = actor["handle"].call.remote((op, args, None, None, router.caller, ""))
                    inflight[ref] = (index, actor)
                if not inflight:
                    continue
                done, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
                if not done:
                    done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    index, actor = inflight.pop(ref)
                    router.release(pool, actor)
                    try:
                        value = ray.get(ref)
                    except RayActorError as exc:
                        raise WorkerCrashed(f"the actor running call {index} died: {exc}", pool=pool, op=op) from None
                    if isinstance(value, Failure) and value.code == RECYCLING:
                        value = self.call(pool, op, **calls[index])
                    results[index] = unwrap(value)
        finally:
            for _, actor in inflight.values():
                router.release(pool, actor)
        return results

    def stream(self, pool: str, op: str, /, **args: Any) -> Stream:
        """Iterate the events of a streaming op; ``.result`` holds its return value at the end."""
        return Stream(self.router, pool, op, args)

    def session(self, pool: str, ttl_s: float | None = None) -> Session:
        """Open a session pinned to one actor of ``pool`` (a context manager that closes it)."""
        self.router.pool(pool)
        return Session(self, unwrap(ray.get(self.coordinator.create_session.remote(pool, ttl_s))))

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

    def job(self, job_id: str) -> Job:
        """The handle of an existing job (job_not_found if there is none)."""
        unwrap(ray.get(self.coordinator.get_job.remote(job_id)))
        return Job(self, job_id)

    def jobs(self, pool: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally of one pool and/or status."""
        return list(ray.get(self.coordinator.list_jobs.remote(pool, status)))

    # ------------------------------------------------------------ shutdown
    def shutdown(self, drain_s: float = 30.0) -> dict[str, Any]:
        """Drain calls, checkpoint sessions, stop every actor and the coordinator (and embedded Ray)."""
        self.router.close()
        summary = dict(ray.get(self.coordinator.shutdown.remote(drain_s)))
        ray.kill(self.coordinator)
        if self.owns_ray:
            ray.shutdown()
        return summary

    def close(self) -> None:
        """Detach this handle (the orchestrator keeps running)."""
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


class Stream:
    """Events of one streaming call. Iterate it; then ``result`` is the op's return value.

    An error in the op is raised (as OrchestratorError) after the events it
    yielded. Closing early (or leaving a ``with`` block, or dropping the
    stream) cancels the op.
    """

    def __init__(self, router: Router, pool: str, op: str, args: dict[str, Any], session: Session | None = None):
        self.router, self.pool, self.op, self.args, self.session = router, pool, op, args, session
        self.result: Any = None
        self.done = False
        self.events = 0
        self.actor: dict[str, Any] | None = None
        self.local = False
        self.exclude: set[str] = set()  # actors that answered "draining" before any event
        self.call_id = router.new_call_id()
        router.check_op(pool, op)
        self.items: Any = None  # opened on first read: the op starts when someone listens

    def _open(self, exclude: set[str]) -> Any:
        router = self.router
        sid = self.session.id if self.session else None
        target = router._target(self.pool, self.session, exclude)
        if target is None:
            router.wait_change(time.monotonic() + WAIT_FOR_ACTOR_S)
            target = router._target(self.pool, self.session, exclude)
        if target == LOCAL:
            self.local = True
            return iter(router.local_host.stream((self.op, self.args, sid, None, "", self.call_id), True))
        if target is None:
            raise PoolUnavailable(f"no ready actor in pool {self.pool!r}", pool=self.pool, op=self.op)
        assert isinstance(target, dict)
        self.actor = target
        router.acquire(self.pool, target)
        buffer = router.pool(self.pool)["limits"]["stream_buffer"]
        method = target["handle"].stream.options(num_returns="streaming", _generator_backpressure_num_objects=buffer)
        if self.session is None:
            return method.remote((self.op, self.args, None, None, router.caller, self.call_id))
        with self.session.lock:
            seq = next(self.session.seqs)
            return method.remote((self.op, self.args, sid, seq, router.caller, self.call_id))

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while not self.done:
            if self.items is None:
                self.items = self._open(self.exclude)
            try:
                item = next(self.items)
                if not self.local:
                    item = ray.get(item)
            except BaseException as exc:
                self._fail(exc)
            if self._take(item):
                return item
        raise StopIteration

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        """Async iteration (the gateway): awaits each event without blocking the loop."""
        while not self.done:
            if self.items is None:
                self.items = await asyncio.to_thread(self._open, self.exclude)
            try:
                item = next(self.items) if self.local else await (await self.items.__anext__())
            except StopAsyncIteration:
                self._fail(StopIteration())
            except BaseException as exc:
                self._fail(exc)
            if self._take(item):
                return item
        raise StopAsyncIteration

    def _fail(self, exc: BaseException) -> NoReturn:
        """The transport ended or broke before the op's Final/Failure."""
        if isinstance(exc, RayActorError) and self.actor is not None:
            self.router.report_dead(self.pool, self.actor, self.session.slot if self.session else None)
        if isinstance(exc, StopIteration):
            self._finish()
            raise WorkerCrashed("the stream ended without a result", pool=self.pool, op=self.op) from None
        if isinstance(exc, RayActorError):
            self._finish()
            raise WorkerCrashed(f"the actor running this stream died: {exc}", pool=self.pool, op=self.op) from None
        self.close()  # interrupted (cancelled task, Ctrl-C): the op must stop too
        raise exc

    def _take(self, item: Any) -> bool:
        """True for an event to hand out; handles Final, Failure and a draining actor."""
        if isinstance(item, Final):
            self._finish()
            self.result = item.value
            return False
        if isinstance(item, Failure):
            if item.code == RECYCLING and self.events == 0 and self.actor is not None:
                self.exclude.add(self.actor["actor_id"])
                self._release()
                self.items = None  # reopened on another actor by the loop
                return False
            self._finish()
            unwrap(item)
        self.events += 1
        return True

    def collect(self) -> tuple[list[Any], Any]:
        """All events and the result."""
        events = list(self)
        return events, self.result

    def close(self) -> None:
        """Stop consuming: the op sees ``ctx.cancelled`` and stops."""
        if not self.done:
            if self.actor is not None:
                self.actor["handle"].cancel.remote(self.call_id)
            self._finish()

    def _release(self) -> None:
        if self.actor is not None:
            self.router.release(self.pool, self.actor)
            self.actor = None

    def _finish(self) -> None:
        self.done = True
        self._release()
        self.items = iter(())

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped half-read must not keep its op running or its slot counted.
        with contextlib.suppress(Exception):
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
