"""WorkerHost: the Ray actor that wraps one instance of a pool's Worker class (its admin API and call entry).

It is a threaded actor: ops run on Ray's executor threads (no extra hop), with
``limits.concurrency`` of them at once; admin methods (ping, cancel, session
admin, drain) run in their own concurrency group so a busy or stuck op never
starves the health check. Running an op is ``execution.py``'s; ordering a
session's calls is ``turnstile.py``'s. A failed op returns a ``Failure`` holding the error dict,
so errors cross the process boundary as data (a ``Failure``), not as wrapped tracebacks.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import pickle
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import psutil
import ray

from orchestrator import metrics
from orchestrator.checkpoints import STORE_ID_ENV, STORE_NODE_ENV, LocalCheckpoints
from orchestrator.contract import Context, OpSpec, Worker, load_worker_class, ops_of
from orchestrator.contract.paths import state_dir
from orchestrator.dataplane import handles
from orchestrator.errors import InvalidArguments, OpNotFound, OrchestratorError, SessionLost, SessionNotFound
from orchestrator.runtime import logs
from orchestrator.runtime.execution import batched, gpu_memory, job_checkpoint, run_op, run_stream, to_error
from orchestrator.runtime.turnstile import SessionSlot, Turn
from orchestrator.types import RECYCLING, Failure, Final, JobRun, Request, session_key

log = logging.getLogger("orchestrator.host")

ADMIN = "admin"


class WorkerHost:
    """Hosts one Worker: validates and runs its ops, holds its sessions, watches itself."""

    def __init__(
        self,
        pool: str,
        slot: int,
        gen: int,
        spec: dict[str, Any],
        namespace: str,
        coordinator: str,
        env_file: str | None = None,
        debug: bool = False,
    ) -> None:
        self.pool, self.slot, self.gen = pool, slot, gen
        self.name = f"{pool}-{slot}" if gen == 0 else f"{pool}-{slot}.{gen}"  # its Ray actor name
        self.actor_tags = {"pool": pool, "actor": self.name}
        logs.install(pool, self.name)
        self.namespace, self.coordinator_name = namespace, coordinator
        self.env_file, self.debug = env_file, debug
        self.spec_hash = spec_hash(spec)
        limits = spec.get("limits", {})
        self.max_memory: int | None = limits.get("max_memory")
        self.max_calls: int | None = limits.get("max_calls")
        self.checkpoint_mode: str = spec.get("sessions", {}).get("checkpoint", "explicit")
        # A stream's batches: the reader holds at most 2 ahead (stream.STREAM_OBJECTS), so the op runs at
        # most about limits.stream_buffer events ahead of it (queued here and in flight).
        self.stream_batch = max(1, int(limits.get("stream_buffer", 256)) // 3)
        self.lock = threading.Lock()
        self.calls = 0
        self.inflight = 0
        self.recycling: str | None = None
        self.running: dict[str, Context] = {}
        self.sessions: dict[str, SessionSlot] = {}
        self.lost: set[str] = set()
        self.closed: dict[str, str] = {}
        self.process = psutil.Process()
        self._coordinator: Any = None
        self._orchestrator: Any = None
        self._handle_lock = threading.Lock()
        self._checkpoints: LocalCheckpoints | None = None  # opened at the first session checkpoint
        self._checkpoints_opened = False
        handles.use_in_actor(self._in_cluster)  # this process's handle (handles.current(): PoolLM, PoolRetriever)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.init_error: dict[str, Any] | None = None
        self.worker: Worker | None = None
        self.ops: dict[str, OpSpec] = {}
        try:
            cls = load_worker_class(spec["worker"], pool, spec.get("options", {}), env_file)
            self.ops = ops_of(cls)
            self.worker = cls(**spec.get("options", {}))
        except OrchestratorError as exc:
            self.init_error = exc.to_dict()
        except BaseException as exc:  # the constructor raised: report it, naming the pool
            error = to_error(exc, pool, None, env_file, debug)
            error.message = f"pools.{pool}: worker constructor failed: {error.message}"
            self.init_error = error.to_dict()

    # ----------------------------------------------------------------- admin
    @ray.method(concurrency_group=ADMIN)
    def ready(self) -> dict[str, Any]:
        """Start-up report: ops catalogue or the init error, where the actor runs, and (for a coordinator
        that adopts it after a restart) its pool, slot, generation, spec, sessions and running job calls."""
        return {
            "error": self.init_error,
            "ops": {name: spec.info() for name, spec in self.ops.items()},
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "pool": self.pool,
            "slot": self.slot,
            "gen": self.gen,
            "spec_hash": self.spec_hash,
            "recycling": self.recycling,
            "sessions": sorted(self.sessions),
            "jobs": {cid: ctx.job_id for cid, ctx in self.running.items() if ctx.job_id is not None},
        }

    @ray.method(concurrency_group=ADMIN)
    def ping(self) -> dict[str, Any]:
        """Health and stats: memory, calls, in-flight ops and what each runs now, sessions and their last use."""
        now = time.time()
        return {
            "pid": os.getpid(),
            "rss": self.process.memory_info().rss,
            "gpu_memory": gpu_memory(),
            "holds": described(self.worker),
            "calls": self.calls,
            "inflight": self.inflight,
            "recycling": self.recycling,
            # A session in a call is in use now: the reaper must never close it as idle.
            "sessions": {sid: now if s.busy else s.last_used for sid, s in self.sessions.items()},
            # What runs now, by call id (list(): op threads add and remove calls while this reads).
            "running": {
                cid: {
                    "op": ctx.op,
                    "job_id": ctx.job_id,
                    "session": ctx.session_id,
                    "started": ctx.started,
                    "task": ctx.ray_task,
                    "progress": dict(ctx.last_progress) or None,
                }
                for cid, ctx in list(self.running.items())
            },
        }

    @ray.method(concurrency_group=ADMIN)
    def cancel(self, call_id: str) -> bool:
        """Set ``ctx.cancelled`` for a running call (the op stops cooperatively)."""
        ctx = self.running.get(call_id)
        if ctx is not None:
            ctx._cancelled = True
        return ctx is not None

    @ray.method(concurrency_group=ADMIN)
    def validate(self, op: str, batch: list[dict[str, Any]]) -> Failure | None:
        """Check a job's op and the arguments of each job submitted together before they are queued (submit
        answers 404/422 at once); in a batch of several, the problem names its job's index (``args[3].n``)."""
        try:
            spec = self._spec(op)
        except OrchestratorError as exc:
            return Failure(self._error(exc, op))
        for index, args in enumerate(batch):
            try:
                self._checked(spec, spec.validate(args, self.pool))
            except OrchestratorError as exc:
                error = self._error(exc, op)
                return Failure(error if len(batch) == 1 else indexed(error, index))
        return None

    @ray.method(concurrency_group=ADMIN)
    def open_session(self, session_id: str) -> None:
        """Create an empty session on this actor."""
        self.sessions[session_id] = SessionSlot()

    @ray.method(concurrency_group=ADMIN)
    def close_session(self, session_id: str, reason: str = "closed") -> bool:
        """Drop a session's state; later calls to it say why it is gone."""
        self.closed[session_id] = reason
        return self.sessions.pop(session_id, None) is not None

    @ray.method(concurrency_group=ADMIN)
    def restore_sessions(self, states: dict[str, bytes], lost: list[str]) -> dict[str, str]:
        """Install sessions moved or restored here; ``lost`` ones answer session_lost.

        A checkpoint that cannot be loaded makes its session lost too; returns those, with why.
        """
        bad: dict[str, str] = {}
        for sid, blob in states.items():
            try:
                state = pickle.loads(blob)
            except Exception as exc:
                bad[sid] = f"{type(exc).__name__}: {exc}"
                continue
            self.sessions[sid] = SessionSlot(state=state, restored=True)
            self.closed.pop(sid, None)
        self.lost.update(lost, bad)
        return bad

    @ray.method(concurrency_group=ADMIN)
    def export_sessions(self) -> dict[str, bytes]:
        """Every session's state, pickled (for recycling and graceful shutdown)."""
        return {sid: pickle.dumps(s.state) for sid, s in self.sessions.items()}

    @ray.method(concurrency_group=ADMIN)
    def drain(self, timeout_s: float, reason: str = "draining") -> bool:
        """Stop taking calls, then wait for the running ones; True if all finished."""
        self.recycling = self.recycling or reason
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.inflight == 0

    @ray.method(concurrency_group=ADMIN)
    def stop(self) -> None:
        """Let the worker release its resources before the actor is killed."""
        if self.worker is not None:
            try:
                self.worker.close()
            except Exception:
                traceback.print_exc()

    # ------------------------------------------------------------------ ops
    def call(self, request: Request, inline: bool = False) -> Any:
        """Run an op; returns its result, or a Failure. A streaming op's events are dropped."""
        outcome: Any = None
        for item in self.stream(request, inline):
            outcome = item
        return outcome.value if isinstance(outcome, Final) else outcome

    def call_batch(self, requests: list[Request]) -> list[Any]:
        """``call`` for each request in turn (``call_many`` sends many in one Ray task); one answer each."""
        return [self.call(request) for request in requests]

    def stream(self, request: Request, inline: bool = False, job: JobRun | None = None) -> Iterator[Any]:
        """Run an op as a stream: its events, then ``Final(result)`` or ``Failure(error)``.

        ``job`` (id, pickled resume point or None) runs it as a job.
        """
        op, args, session, seq, caller, call_id = request
        admitted, outcome, started = False, "ok", time.perf_counter()
        try:
            self._admit(session, inline)
            admitted = True
            spec = self._spec(op)
            with self._turn(session, seq, caller) as ctx_state:
                args = self._validate(spec, args, session, checked=job is not None)
                ctx = self._context(spec, session, call_id, ctx_state)
                if job is not None:
                    self._as_job(ctx, job)
                try:
                    with logs.calling(op, call_id, session, ctx.job_id):
                        if job is not None:  # events grouped per read, checkpoints among them: see batched
                            yield from batched(self._job_items(spec, args, ctx), ctx, final_in_batch=True)
                        elif spec.stream and not inline:  # events grouped per read, at most half the buffer
                            stream = run_stream(self.worker, spec, args, ctx, self._event_loop)
                            yield from batched(stream, ctx, self.stream_batch)
                        elif spec.stream:
                            yield from run_stream(self.worker, spec, args, ctx, self._event_loop)
                        else:
                            yield Final(run_op(self.worker, spec, args, ctx, self._event_loop))
                    self._after_session_call(session)
                finally:
                    self.running.pop(call_id, None)
        except GeneratorExit:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            error = self._error(exc, op)
            outcome = str(error.get("code"))
            yield Failure(error)
        finally:
            self._after_call(admitted)
            tags = {"pool": self.pool, "op": op}
            metrics.call_seconds().observe(time.perf_counter() - started, tags=tags)
            metrics.calls().inc(tags={**tags, "outcome": outcome})

    # ------------------------------------------------------------- internals
    def _admit(self, session: str | None, inline: bool) -> None:
        if self.recycling and not inline:
            raise _Recycling(self.recycling)
        if session is not None:
            if session in self.lost:
                raise SessionLost(
                    f"session {session} was lost when its actor died (no checkpoint to restore it from)",
                    pool=self.pool,
                )
            if session not in self.sessions:
                why = self.closed.get(session, "never opened on this actor")
                raise SessionNotFound(f"session {session} is not open ({why})", pool=self.pool)
        with self.lock:
            self.inflight += 1
            metrics.inflight().set(self.inflight, tags=self.actor_tags)

    def _spec(self, op: str) -> OpSpec:
        spec = self.ops.get(op)
        if spec is None:
            raise OpNotFound(f"pool {self.pool!r} has no op {op!r} (ops: {', '.join(sorted(self.ops))})")
        return spec

    def _validate(self, spec: OpSpec, args: dict[str, Any], session: str | None, checked: bool) -> dict[str, Any]:
        """Validate a call's arguments; the op's own ``check`` too unless it ran already (a job's, at submit)."""
        if spec.session is True and session is None:  # "optional" ops run outside a session too
            raise InvalidArguments(
                f"op {spec.name!r} keeps session state: call it inside a session", pool=self.pool, op=spec.name
            )
        args = spec.validate(args, self.pool)
        return args if checked else self._checked(spec, args)

    def _checked(self, spec: OpSpec, args: dict[str, Any]) -> dict[str, Any]:
        """Run the op's own ``check`` on validated arguments (errors name this pool and op)."""
        if spec.check is not None:
            try:
                spec.check(self.worker, args, self._in_cluster)
            except OrchestratorError as exc:
                exc.pool, exc.op = exc.pool or self.pool, exc.op or spec.name
                raise
        return args

    def _turn(self, session: str | None, seq: int | None, caller: str) -> Turn:
        return Turn(self.sessions[session] if session is not None else None, seq, caller)

    def _context(self, spec: OpSpec, session: str | None, call_id: str, state: dict[str, Any] | None) -> Context:
        ctx = Context(pool=self.pool, op=spec.name, session_id=session)
        if state is not None:
            ctx.state = state
        if session is not None:
            ctx._checkpoint = lambda obj: self._checkpoint_session(session, obj)
        ctx._orchestrator = self._in_cluster
        if call_id:
            self.running[call_id] = ctx
        return ctx

    def _as_job(self, ctx: Context, job: JobRun) -> None:
        job_id, resume = job
        ctx.job_id = job_id
        ctx.resume = pickle.loads(resume) if resume is not None else None
        ctx._checkpoint = functools.partial(job_checkpoint, ctx)
        ctx.ray_task = ray.get_runtime_context().get_task_name()  # here: the op runs in a thread of its own

    def _job_items(self, spec: OpSpec, args: dict[str, Any], ctx: Context) -> Iterator[Any]:
        """A job's op as a stream: a streaming op's events, then ``Final``; a plain op's ``Final`` alone."""
        if spec.stream:
            yield from run_stream(self.worker, spec, args, ctx, self._event_loop)
        else:
            yield Final(run_op(self.worker, spec, args, ctx, self._event_loop))

    def _after_session_call(self, session: str | None) -> None:
        """``after_call``: store the session's state before the call answers, unless it is the state this actor
        already stored (a call that changed nothing costs no store write: the checkpoint already holds it)."""
        if session is None or self.checkpoint_mode != "after_call":
            return
        slot = self.sessions[session]
        blob = pickle.dumps(slot.state)
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        if digest != slot.saved:
            self._put_checkpoint(session_key(session), blob)
            slot.saved = digest

    def _after_call(self, admitted: bool) -> None:
        if not admitted:
            return
        with self.lock:
            self.inflight -= 1
            self.calls += 1
            calls = self.calls
            metrics.inflight().set(self.inflight, tags=self.actor_tags)
        if self.recycling:
            return
        if self.max_calls is not None and calls >= self.max_calls:
            self._recycle(f"max_calls: served {calls} calls (limit {self.max_calls})")
        elif self.max_memory is not None:
            rss = self.process.memory_info().rss
            if rss > self.max_memory:
                self._recycle(f"max_memory: rss {rss} bytes over the limit of {self.max_memory}")

    def _recycle(self, reason: str) -> None:
        self.recycling = reason
        self._coordinator_handle().report_recycle.remote(self.pool, self.slot, self.gen, reason)

    def _checkpoint_session(self, session: str, obj: Any) -> None:
        """An op's own ``ctx.checkpoint()`` in a session: stored at once; what the store holds is then unknown to
        ``_after_session_call``, which stores the state again after the call."""
        slot = self.sessions.get(session)
        if slot is not None:
            slot.saved = None
        self._put_checkpoint(session_key(session), pickle.dumps(obj))

    def _put_checkpoint(self, key: str, blob: bytes) -> None:
        """Store a session's checkpoint; it is durable when this returns (before the call answers)."""
        local = self._local_checkpoints()
        if local is not None:  # on the store's node: one local commit, no round trip, coordinator up or not
            try:
                local.put(key, blob)
            except sqlite3.Error as exc:  # the store is busy past the timeout, or was replaced: the other way
                log.warning("checkpoint %s not written to the store directly (%s): through the coordinator", key, exc)
            else:
                metrics.checkpoint_bytes().inc(len(blob), tags={"pool": self.pool, "kind": "session"})
                return
        # The coordinator's methods are retried by Ray across its restarts: while it is down this
        # waits, and the call reports success only once the checkpoint is stored.
        ray.get(self._coordinator_handle().put_checkpoint.remote(key, blob))

    def _local_checkpoints(self) -> LocalCheckpoints | None:
        with self._handle_lock:
            if not self._checkpoints_opened:
                self._checkpoints_opened = True
                self._checkpoints = LocalCheckpoints.open(
                    state_dir(),
                    os.environ.get(STORE_ID_ENV),
                    os.environ.get(STORE_NODE_ENV),
                    ray.get_runtime_context().get_node_id(),
                )
            return self._checkpoints

    def _coordinator_handle(self) -> Any:
        if self._coordinator is None:
            self._coordinator = ray.get_actor(self.coordinator_name, namespace=self.namespace)
        return self._coordinator

    def _in_cluster(self) -> Any:
        with self._handle_lock:  # DSPy's threads may all reach for it at once: build one
            if self._orchestrator is None:
                self._orchestrator = handles.Orchestrator.in_cluster(
                    self.namespace, self.coordinator_name, local_host=self
                )
        return self._orchestrator

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="op-loop", daemon=True).start()
            return self._loop

    def _error(self, exc: BaseException, op: str | None) -> dict[str, Any]:
        if isinstance(exc, _Recycling):
            return {"code": RECYCLING, "message": str(exc)}
        return to_error(exc, self.pool, op, self.env_file, self.debug).to_dict()


class _Recycling(Exception):
    """The host is draining; the call never started."""


def indexed(error: dict[str, Any], index: int) -> dict[str, Any]:
    """An error about one job of a batch, naming it: ``args[index]`` before its message and each field."""
    detail = [
        {**item, "field": f"args[{index}].{item['field']}" if item.get("field") else f"args[{index}]"}
        for item in error.get("detail") or []
    ]
    return {**error, "message": f"args[{index}]: {error['message']}", "detail": detail or error.get("detail")}


def described(worker: Worker | None) -> dict[str, Any] | None:
    """The worker's ``describe()`` (None when it has none to give, or it failed: a ping must answer)."""
    try:
        return worker.describe() if worker is not None else None
    except Exception:
        log.exception("describe() failed")
        return None


def spec_hash(spec: dict[str, Any]) -> str:
    """A digest of a pool spec: a restarted coordinator adopts an actor only if its spec is unchanged."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def class_name(pool: str, worker: str) -> str:
    """The actor class name Ray's dashboard and state API show for a pool's actors: ``<pool>:<Class>``."""
    return f"{pool}:{worker.rpartition(':')[2]}"


@functools.cache
def actor_class(pool: str, worker: str) -> Any:
    """A pool's WorkerHost as a Ray actor class (admin methods in their own thread group).

    Each pool gets its own subclass, named by ``class_name``, so the Ray dashboard tells the pools'
    actors apart (every one would read ``WorkerHost`` otherwise). Adoption finds actors by name, not by
    class. Built once per process and pool: building a Ray actor class costs ~150 ms, and a restart
    must not pay it again.
    """
    name = class_name(pool, worker)
    host = type(name, (WorkerHost,), {"__module__": __name__, "__qualname__": name, "__doc__": WorkerHost.__doc__})
    return ray.remote(concurrency_groups={ADMIN: 4})(host)  # type: ignore[call-overload]
