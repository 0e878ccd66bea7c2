"""The coordinator: the control plane's one named, detached async actor, thin over its parts.

    Coordinator (Ray actor: the methods callers use)
    ├── Supervisor     supervisor.py   launch, ping, restart, recycle, stop
    ├── SessionTable   sessions.py     placement, reaping, checkpoints, restore
    ├── RoutingTable   routing.py      the versioned table routers long-poll
    ├── JobRunner      jobs.py         queues, runs, retries, event logs (through ``JobHost``)
    ├── FileTable      files.py        uploaded files (OpenAI's Files API), checked before they are stored
    ├── ProgramRegistry programs.py    program versions and the live one, loaded pool-wide by the programs pool
    └── Store          store.py        SQLite: sessions, checkpoints, jobs, events, files

It is never on the call path. Its loop runs each part's step and catches and
logs each step's failure: the loop never dies. A task it spawns that fails is
logged, never lost silently.

It survives its own death (Ray Serve's controller is the model): Ray restarts
it without limit on the head node (where its store lives) and retries the
calls that were in flight, so callers see a pause, not an error. Each start
(``_boot``) rebuilds the state from the store (open sessions, unfinished jobs)
and from the pool actors alive by name, which are detached: it adopts them,
kills strays and launches what is missing. Only the desired state is stored;
the live state is read back from the actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import ray

from orchestrator import metrics
from orchestrator.config.schema import Config
from orchestrator.control.autoscale import Autoscaler
from orchestrator.control.files import FileTable
from orchestrator.control.jobs import JobRunner
from orchestrator.control.poolcalls import PoolCalls
from orchestrator.control.pools import ActorSlot, PoolState
from orchestrator.control.programs import ProgramRegistry
from orchestrator.control.routing import RoutingTable
from orchestrator.control.sessions import SessionTable
from orchestrator.control.store import Store
from orchestrator.control.supervisor import DRAIN_S, Supervisor
from orchestrator.errors import InvalidConfig
from orchestrator.types import Failure

log = logging.getLogger("orchestrator.coordinator")

TICK_S = 0.25
EXPIRE_EVERY_S = 60.0


class Coordinator:
    """Owns every pool; the single writer of routing, session and job state."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = Config.model_validate(config)
        self.store = Store(self.config.state_path())
        self.pools: dict[str, PoolState] = {}
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()  # strong references: the loop only keeps weak ones
        self.loop_task: asyncio.Task[None] | None = None
        self.expired_at = 0.0
        self.expiring = False  # a retention pass is running (one at a time, off the loop's step)
        self.routing_table = RoutingTable(self.pools, lambda pool: self.session_table.owned_slots(pool))
        self.session_table = SessionTable(self.pools, self.store, self.routing_table)
        self.supervisor = Supervisor(
            self.config, self.pools, self.routing_table, self.session_table, self.spawn, self.store.id
        )
        self.jobs = JobRunner(self, self.store, self.config.jobs)
        self.files = FileTable(self.store, self.config.files)
        self.pool_calls = PoolCalls(self.store, self.pools, self.supervisor.recycle)
        self.supervisor.replay = self.pool_calls.replay
        self.programs = ProgramRegistry(self.store, self.pools.keys(), self.pool_calls, self.get_job)
        self.autoscaler = Autoscaler(
            self.pools,
            lambda pool: len(self.jobs.queues.get(pool, ())),
            self._busy,
            self.supervisor.add_actor,
            lambda pool, slot, why: self.spawn(self.supervisor.remove_actor(pool, slot, why)),
        )
        for name, spec in self.config.pools.items():
            self.pools[name] = PoolState(name, spec)
        self.boot_task = asyncio.get_running_loop().create_task(self._boot())

    # ------------------------------------------------- what JobRunner may use
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine as a task; its failure is logged (a task nobody awaits must not fail silently)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(self.tasks.discard)

    def session_slot(self, session_id: str) -> tuple[str, int] | None:
        """The pool and slot index a session is pinned to (None if it is not open)."""
        return self.session_table.slot_of(session_id)

    def _busy(self, pool: PoolState, slot: ActorSlot) -> bool:
        """The slot holds a session or runs a job: autoscaling never removes it."""
        if self.session_table.counts(pool.name).get(slot.index):
            return True
        return any(run.pool == pool.name and run.slot == slot.index for run in self.jobs.runs.values())

    async def report_dead(self, pool_name: str, index: int, gen: int) -> None:
        """A caller saw this actor die: check it at once instead of at the next ping."""
        await self._booted()
        await self.supervisor.report_dead(pool_name, index, gen)

    # ------------------------------------------------------------ start-up
    async def _boot(self) -> None:
        """Rebuild the state from the store and the live actors, then start supervising."""
        found = await self.supervisor.find_actors()
        sessions = self.session_table.load()
        for pool in self.pools.values():
            for index in range(len(pool.slots), 1 + max((i for p, i in found if p == pool.name), default=-1)):
                pool.slots.append(ActorSlot(pool.name, index))  # actors it had autoscaled to
            metrics.pool_actors().set(len(pool.slots), tags={"pool": pool.name})
            if not pool.slots:
                pool.state = "running"  # size.min 0: nothing to wait for (autoscaling starts one for queued jobs)
            for slot in pool.slots:
                actor = found.get((pool.name, slot.index))
                if actor is not None:
                    await _guarded(f"adopting {slot.name}", self.supervisor.adopt(pool, slot, *actor))
                else:
                    self.supervisor.first_gen(pool, slot)
                    self.supervisor.launch(pool, slot)
        recovered = self.jobs.recover()
        if found or sessions or recovered:
            log.info(
                "recovered: %d live actor(s) adopted, %d open session(s), %d unfinished job(s)",
                len(found),
                sessions,
                recovered,
            )
        self.loop_task = asyncio.create_task(self._loop())

    async def apply(self) -> Any:
        """Wait for start-up: return once each actor is ready, pending for resources, or failed."""
        try:
            await asyncio.shield(self.boot_task)
        except Exception as exc:
            log.exception("coordinator start-up failed")
            return Failure(InvalidConfig(f"orchestrator start-up failed: {exc}").to_dict())
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if all(
                p.state == "failed" or all(s.state in ("ready", "pending") for s in p.slots)
                for p in self.pools.values()
            ):
                break
            await asyncio.sleep(0.05)
        failed = {p.name: p.reason for p in self.pools.values() if p.state == "failed"}
        if failed:
            message = "; ".join(f"pool {name!r}: {why}" for name, why in failed.items())
            return Failure(InvalidConfig(message, pool=next(iter(failed)), detail=failed).to_dict())
        return await self.status()

    async def _booted(self) -> None:
        """Wait until start-up has rebuilt the state: until then, answers would speak of an empty orchestrator."""
        if not self.boot_task.done():
            with contextlib.suppress(Exception):  # apply() reports a failed start-up
                await asyncio.shield(self.boot_task)

    async def _loop(self) -> None:
        while not self.stopping:
            for pool in list(self.pools.values()):
                await _guarded(f"supervision of pool {pool.name}", self.supervisor.check(pool))
                try:
                    self.autoscaler.step(pool)
                except Exception:
                    log.exception("autoscaling pool %s failed", pool.name)
            await _guarded("session reaping", self.session_table.reap())
            try:
                self.jobs.dispatch()
                if time.monotonic() - self.expired_at > EXPIRE_EVERY_S and not self.expiring:
                    self.expired_at = time.monotonic()
                    self.spawn(self._expire())
            except Exception:
                log.exception("job dispatch failed")
            await asyncio.sleep(TICK_S)

    # ------------------------------------------------------ actor reports
    async def _expire(self) -> None:
        self.expiring = True
        try:
            await self.jobs.expire()
        finally:
            self.expiring = False

    async def report_recycle(self, pool_name: str, index: int, gen: int, reason: str) -> None:
        """An actor passed max_memory or max_calls: replace it after its current calls."""
        await self._booted()
        await self.supervisor.recycle(pool_name, index, gen, reason)

    async def pool_call(self, pool_name: str, op: str, args: dict[str, Any]) -> Any:
        """Run a pool-wide op on every ready actor of a pool (see :mod:`orchestrator.control.poolcalls`)."""
        await self._booted()
        return await self.pool_calls.run(pool_name, op, args)

    async def put_checkpoint(self, key: str, blob: bytes) -> None:
        """Persist a checkpoint (called by actors before they answer); the write runs off the event loop."""
        await self._booted()
        await asyncio.to_thread(self.store.put_checkpoint, key, blob)
        record = self.session_table.records.get(key.partition(":")[2])
        metrics.checkpoint_bytes().inc(len(blob), tags={"pool": record["pool"] if record else "", "kind": "session"})

    async def restart_pool(self, name: str) -> Any:
        """Start a failed or stopped pool again."""
        await self._booted()
        return await self.supervisor.restart_pool(name)

    # ------------------------------------------------------------- sessions
    async def create_session(self, pool_name: str, ttl_s: float | None = None) -> Any:
        """Open a session on the least-loaded actor with room; returns its record."""
        await self._booted()
        return await self.session_table.create(pool_name, ttl_s)

    async def close_session(self, session_id: str, reason: str = "closed by client") -> Any:
        """Close a session and drop its state and checkpoint."""
        await self._booted()
        return await self.session_table.close(session_id, reason)

    async def get_session(self, session_id: str) -> Any:
        """One open session's record."""
        await self._booted()
        return self.session_table.get(session_id)

    async def list_sessions(
        self, pool_name: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Any:
        """Open sessions, newest first, optionally of one pool (a page after session ``after`` when given)."""
        await self._booted()
        return self.session_table.list(pool_name, limit, after)

    # ------------------------------------------------------------- routing
    async def routing(self, known_version: int = -1, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The routing table, or None if it is still ``known_version`` after ``wait_s`` (long poll)."""
        await self._booted()
        return await self.routing_table.wait(known_version, wait_s)

    # ----------------------------------------------------------------- jobs
    async def submit_job(
        self, pool: str, op: str, args: dict[str, Any], session: str | None = None, max_retries: int | None = None
    ) -> Any:
        """Queue a job; returns its record (or a Failure for a bad pool, op or arguments)."""
        records = await self.submit_jobs(pool, op, [args], session, max_retries)
        return records if isinstance(records, Failure) else records[0]

    async def submit_jobs(
        self,
        pool: str,
        op: str,
        batch: list[dict[str, Any]],
        session: str | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Queue jobs of one op together, one per arguments in ``batch``: their records, in order (or a Failure
        for a bad pool, op, or any job's arguments, and then none is queued)."""
        await self._booted()
        return await self.jobs.submit(pool, op, batch, session, max_retries)

    async def wait_jobs(self, job_ids: list[str], wait_s: float) -> Any:
        """Many jobs' records once all have finished, or after ``wait_s`` (long poll; job_not_found names one
        that does not exist)."""
        await self._booted()
        return await self.jobs.wait(job_ids, wait_s)

    def get_job(self, job_id: str) -> Any:
        """One job's record."""
        return self.jobs.get(job_id)

    def list_jobs(
        self,
        pool: str | None = None,
        status: str | None = None,
        limit: int = 1000,
        after: str | None = None,
        op: str | None = None,
    ) -> Any:
        """Jobs, newest first, of one pool, status and/or op when given (a page after job ``after`` when given)."""
        return self.jobs.list(pool, status, limit, after, op)

    async def job_events(self, job_id: str, after: int = 0, wait_s: float = 0.0) -> Any:
        """Logged events after a sequence number (long poll)."""
        await self._booted()
        return await self.jobs.events(job_id, after, wait_s)

    async def cancel_job(self, job_id: str) -> Any:
        """Cancel a job (a no-op answer for a finished one)."""
        await self._booted()
        return await self.jobs.cancel(job_id)

    # ---------------------------------------------------------------- files
    # Uploads and deletions (disk writes, and parsing a whole training file) and content reads run off the loop.
    async def put_file(self, filename: str, purpose: str, data: bytes) -> Any:
        """Check and store an uploaded file; its OpenAI file object (or a Failure naming what is wrong)."""
        return await asyncio.to_thread(self.files.put, filename, purpose, data)

    def list_files(self, purpose: str | None = None, limit: int = -1, after: str | None = None) -> Any:
        """File objects, newest first (of one purpose when given; a page after file ``after`` when given)."""
        return self.files.list(purpose, limit, after)

    def get_file(self, file_id: str) -> Any:
        """One file object (or a Failure: file_not_found)."""
        return self.files.get(file_id)

    async def file_content(self, file_id: str) -> Any:
        """A file's bytes (or a Failure: file_not_found)."""
        return await asyncio.to_thread(self.files.content, file_id)

    async def delete_file(self, file_id: str) -> Any:
        """Delete a file; ``{"id", "object": "file", "deleted": True}`` (or a Failure: file_not_found)."""
        return await asyncio.to_thread(self.files.delete, file_id)

    # ------------------------------------------------------------- programs
    async def register_program(
        self, pool: str, name: str, program: Any = None, job_id: str | None = None, model: Any = None
    ) -> Any:
        """Register a new version of program ``name`` on the programs pool ``pool`` (see control/programs.py)."""
        await self._booted()
        return await self.programs.register(pool, name, program, job_id, model)

    def list_programs(self) -> list[dict[str, Any]]:
        """Every registered program, by name."""
        return self.programs.listing()

    def get_program(self, name: str, states: bool = False) -> Any:
        """One program's versions and its live one (or a Failure: program_not_found)."""
        return self.programs.show(name, states)

    def resolve_program(self, name: str, version: int | None = None) -> Any:
        """The version a run of ``name`` uses (``version``, checked, or the live one)."""
        return self.programs.resolve(name, version)

    async def promote_program(self, pool: str, name: str, version: Any) -> Any:
        """Make ``version`` of ``name`` the live one on every actor of ``pool``, then in the registry."""
        await self._booted()
        return await self.programs.promote(pool, name, version)

    # --------------------------------------------------------------- status
    async def status(self) -> dict[str, Any]:
        """Every pool: state, actors, sessions, counters and recent events."""
        await self._booted()
        out = {}
        jobs = self.jobs.counts()
        for pool in self.pools.values():
            counts = self.session_table.counts(pool.name)
            out[pool.name] = {
                "name": pool.name,
                "state": pool.state,
                "reason": pool.reason,
                "worker": pool.spec.worker,
                "size": {**pool.spec.size.model_dump(), "actors": len(pool.slots)},
                "actors": [s.status(counts.get(s.index, 0)) for s in pool.slots],
                "sessions": sum(counts.values()),
                "ops": pool.ops,
                **pool.counters,
                "jobs": jobs.get(pool.name, {}),
                "events": list(pool.events),
            }
        return out

    # ------------------------------------------------------------- shutdown
    async def shutdown(self, drain_s: float = DRAIN_S) -> dict[str, Any]:
        """Stop taking calls, drain, checkpoint sessions, stop the actors."""
        self.stopping = True
        for pool in self.pools.values():
            if pool.state != "failed":
                pool.state, pool.reason = "stopped", "shut down"
        await self.routing_table.bump()
        summary = await self.supervisor.stop_all(drain_s)
        running = [run.task for run in self.jobs.runs.values() if run.task is not None]
        if running:  # let interrupted jobs record themselves as queued before the store closes
            await asyncio.wait(running, timeout=5.0)
        self.store.close()
        return summary


async def _guarded(what: str, step: Coroutine[Any, Any, Any]) -> None:
    """Run one loop step; log its failure instead of letting it end the loop."""
    try:
        await step
    except Exception:
        log.exception("%s failed", what)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("coordinator task %s failed", task.get_name(), exc_info=task.exception())


HEAD_NODE = {"node:__internal_head__": 0.001}  # Ray's marker resource of the head node


def coordinator_class() -> Any:
    """The Coordinator as a Ray actor class: restarted by Ray without limit, calls in flight retried,
    pinned to the head node (its store is there). Start it detached and named (see ``launch.start``)."""
    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, resources=HEAD_NODE)(Coordinator)
