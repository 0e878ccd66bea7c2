"""The coordinator: the control plane, one named detached async actor.

It starts pools, watches their actors (death, hung pings, recycle reports),
restarts them within each pool's restart intensity, places and reaps
sessions, keeps checkpoints in the store, and publishes a versioned routing
table that callers long-poll. It is never on the call path. Each step of its
loop catches and logs its own failure: the loop never dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RuntimeEnvSetupError

from orchestrator.config import Config
from orchestrator.envs import runtime_env
from orchestrator.errors import InvalidConfig, Overloaded, PoolNotFound, PoolUnavailable, SessionNotFound
from orchestrator.host import actor_class
from orchestrator.jobs import JobRunner
from orchestrator.pools import ActorSlot, PoolState, choose_session_slot, demanded, pending_reason
from orchestrator.router import first_line
from orchestrator.types import Failure

log = logging.getLogger("orchestrator.coordinator")

COORDINATOR_NAME = "coordinator"
TICK_S = 0.25
PENDING_AFTER_S = 1.0
DRAIN_S = 30.0


class Coordinator:
    """Owns every pool; the single writer of routing and session state."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = Config.model_validate(config)
        self.namespace = self.config.ray.namespace
        from orchestrator.store import Store

        self.store = Store(self.config.state_path())
        self.pools: dict[str, PoolState] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.changed: asyncio.Condition | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()  # strong references: the loop only keeps weak ones
        self.jobs = JobRunner(self)
        self.expired_at = 0.0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ start-up
    async def apply(self) -> Any:
        """Start every pool; return once each actor is ready, pending for resources, or failed."""
        self.changed = asyncio.Condition()
        for name, spec in self.config.pools.items():
            pool = self.pools[name] = PoolState(name, spec)
            for slot in pool.slots:
                self._launch(pool, slot)
        self.loop_task = asyncio.create_task(self._supervise())
        recovered = self.jobs.recover()
        if recovered:
            log.info("re-queued %d unfinished job(s) from the store", recovered)
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
        return self.status()

    def _launch(self, pool: PoolState, slot: ActorSlot) -> None:
        spec = pool.spec
        env_dir = self.config.env_dir(pool.name)
        options: dict[str, Any] = {
            "name": slot.name,
            "namespace": self.namespace,
            "num_cpus": spec.resources.num_cpus,
            "num_gpus": spec.resources.num_gpus,
            "max_concurrency": spec.limits.concurrency,
            "max_restarts": 0,
            "runtime_env": runtime_env(spec, env_dir),
        }
        if spec.resources.memory:
            options["memory"] = spec.resources.memory
        if spec.resources.custom:
            options["resources"] = dict(spec.resources.custom)
        env_file = str(Path(env_dir, "requirements.txt")) if env_dir else None
        slot.state, slot.reason, slot.since = "starting", None, time.time()
        slot.stats, slot.pid, slot.actor_id = {}, None, None  # a new process: none of the old one's numbers
        slot.handle = (
            actor_class()
            .options(**options)
            .remote(
                pool.name,
                slot.index,
                slot.gen,
                spec.model_dump(),
                self.namespace,
                COORDINATOR_NAME,
                env_file,
                self.config.debug,
            )
        )
        self._spawn(self._await_ready(pool, slot, slot.gen))

    async def _await_ready(self, pool: PoolState, slot: ActorSlot, gen: int) -> None:
        try:
            info = await slot.handle.ready.remote()
        except RuntimeEnvSetupError as exc:
            await self._fail_pool(pool, f"env build failed for {self.config.env_dir(pool.name)}: {exc}")
            return
        except RayActorError as exc:
            if slot.gen == gen and slot.state != "stopped":
                await self._on_death(pool, slot, gen, f"died while starting: {exc}")
            return
        if slot.gen != gen or slot.state in ("stopped", "dead"):
            return
        if info["error"] is not None:
            await self._fail_pool(pool, info["error"]["message"])
            return
        slot.pid, slot.node_id, slot.actor_id = info["pid"], info["node_id"], info["actor_id"]
        pool.ops = info["ops"]
        await self._restore_sessions(pool, slot)
        slot.state, slot.reason, slot.since, slot.last_ping = "ready", None, time.time(), time.monotonic()
        if pool.state == "starting":
            pool.state = "running"
        pool.event("ready", slot.name)
        await self._bump()

    async def _restore_sessions(self, pool: PoolState, slot: ActorSlot) -> None:
        states: dict[str, bytes] = {}
        lost: list[str] = []
        for sid, record in self.sessions.items():
            if record["pool"] == pool.name and record["slot"] == slot.index and record.get("gen", 0) < slot.gen:
                blob = self.store.get_checkpoint(f"session:{sid}")
                if blob is None:
                    lost.append(sid)
                else:
                    states[sid] = blob
                record["gen"] = slot.gen
        if states or lost:
            await slot.handle.restore_sessions.remote(states, lost)
            pool.event("sessions_restored", slot.name, f"{len(states)} restored, {len(lost)} lost")

    # ---------------------------------------------------------- supervision
    async def _supervise(self) -> None:
        while not self.stopping:
            for pool in list(self.pools.values()):
                try:
                    await self._check_pool(pool)
                except Exception:  # one bad step must never stop the loop
                    log.exception("supervision step failed for pool %s", pool.name)
            try:
                await self._reap_sessions()
            except Exception:
                log.exception("session reaping failed")
            try:
                self.jobs.dispatch()
                if time.monotonic() - self.expired_at > 60:
                    self.expired_at = time.monotonic()
                    self.jobs.expire()
            except Exception:
                log.exception("job dispatch failed")
            await asyncio.sleep(TICK_S)

    async def _check_pool(self, pool: PoolState) -> None:
        if pool.state in ("failed", "stopped"):
            return
        now = time.monotonic()
        waiting = [
            s for s in pool.slots if s.state in ("starting", "pending") and time.time() - s.since > PENDING_AFTER_S
        ]
        if waiting:
            request = pool.resource_request()
            # Only an unplaced demand of our shape means "waiting for resources"; otherwise Ray has
            # placed the actor and it is building its env or running its constructor.
            reason = pending_reason(request, _nodes()) if demanded(request, _pending_demands()) else None
            for slot in waiting:
                slot.state, slot.reason = (
                    ("pending", reason) if reason else ("starting", "building env or initializing")
                )
        for slot in pool.slots:
            if slot.state == "ready" and not slot.pinging and now - slot.last_ping >= pool.spec.health.period_s:
                slot.pinging = True
                self._spawn(self._ping(pool, slot, slot.gen))

    async def _ping(self, pool: PoolState, slot: ActorSlot, gen: int) -> None:
        try:
            slot.stats = await asyncio.wait_for(_as_future(slot.handle.ping.remote()), pool.spec.health.timeout_s)
        except (TimeoutError, GetTimeoutError):
            if slot.gen == gen and slot.state == "ready":
                pool.counters["hung"] += 1
                ray.kill(slot.handle, no_restart=True)
                await self._on_death(pool, slot, gen, f"hung: no answer to ping in {pool.spec.health.timeout_s:g}s")
        except RayActorError as exc:
            await self._on_death(pool, slot, gen, f"died: {first_line(exc)}")
        finally:
            slot.pinging = False
            slot.last_ping = time.monotonic()

    async def _on_death(self, pool: PoolState, slot: ActorSlot, gen: int, reason: str) -> None:
        if slot.gen != gen or slot.state in ("dead", "stopped") or pool.state in ("failed", "stopped"):
            return
        slot.state, slot.reason = "dead", reason
        pool.event("died", slot.name, reason)
        await self._bump()
        if not pool.intensity.allow():
            spec = pool.spec.restart
            why = f"restart intensity exceeded: more than {spec.max_restarts} restarts in {spec.within_s:g}s"
            await self._fail_pool(pool, f"{why}; last: {reason}")
            return
        pool.counters["restarts"] += 1
        slot.gen += 1
        pool.event("restarting", slot.name, reason)
        self._launch(pool, slot)

    async def _fail_pool(self, pool: PoolState, reason: str) -> None:
        if pool.state == "failed":
            return
        pool.state, pool.reason = "failed", reason
        pool.event("failed", None, reason)
        for slot in pool.slots:
            if slot.handle is not None and slot.state != "dead":
                ray.kill(slot.handle, no_restart=True)
            slot.state = "stopped"
        await self._bump()

    async def report_dead(self, pool_name: str, index: int, gen: int) -> None:
        """A caller saw this actor die: check at once instead of at the next ping."""
        pool = self.pools.get(pool_name)
        if pool is None or index >= len(pool.slots):
            return
        slot = pool.slots[index]
        if slot.gen == gen and slot.state == "ready" and not slot.pinging:
            slot.pinging = True
            await self._ping(pool, slot, gen)

    async def report_recycle(self, pool_name: str, index: int, gen: int, reason: str) -> None:
        """An actor passed max_memory or max_calls: replace it after its current calls."""
        pool = self.pools[pool_name]
        slot = pool.slots[index]
        if slot.gen != gen or slot.state != "ready":
            return
        old = slot.handle
        slot.state, slot.reason = "draining", reason
        pool.event("recycle", slot.name, reason)
        pool.counters["recycles"] += 1
        await self._bump()
        try:
            await old.drain.remote(DRAIN_S, reason)
            states = await old.export_sessions.remote()
            await old.stop.remote()
        except RayActorError:
            states = {}
        ray.kill(old, no_restart=True)
        for sid, blob in states.items():  # the replacement restores these as it starts
            self.store.put_checkpoint(f"session:{sid}", blob)
        slot.gen += 1
        self._launch(pool, slot)

    # ------------------------------------------------------------- sessions
    async def create_session(self, pool_name: str, ttl_s: float | None = None) -> Any:
        """Open a session on the least-loaded actor with room; returns its record."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return Failure(PoolNotFound(f"no pool {pool_name!r}", pool=pool_name).to_dict())
        if pool.state != "running":
            return Failure(PoolUnavailable(f"pool is {pool.state}: {pool.reason}", pool=pool_name).to_dict())
        slot = choose_session_slot(pool.slots, self._session_counts(pool_name), pool.spec.sessions.per_worker)
        if slot is None:
            return Failure(
                Overloaded(
                    f"every actor holds its {pool.spec.sessions.per_worker} session(s); close one or add actors",
                    pool=pool_name,
                ).to_dict()
            )
        sid = uuid.uuid4().hex
        record = {
            "id": sid,
            "pool": pool_name,
            "slot": slot.index,
            "gen": slot.gen,
            "created": time.time(),
            "last_used": time.time(),
            "ttl_s": ttl_s if ttl_s is not None else pool.spec.sessions.ttl_s,
        }
        await slot.handle.open_session.remote(sid)
        self.sessions[sid] = record
        self.store.put_session(record)
        await self._bump()
        return {k: record[k] for k in ("id", "pool", "slot", "created", "ttl_s")}

    async def close_session(self, session_id: str, reason: str = "closed by client") -> Any:
        """Close a session and drop its state and checkpoint."""
        record = self.sessions.pop(session_id, None)
        if record is None:
            return Failure(SessionNotFound(f"no open session {session_id}").to_dict())
        slot = self.pools[record["pool"]].slots[record["slot"]]
        with contextlib.suppress(RayActorError):
            await slot.handle.close_session.remote(session_id, reason)
        self.store.close_session(session_id, reason)
        self.store.delete_checkpoint(f"session:{session_id}")
        await self._bump()
        return None

    def get_session(self, session_id: str) -> Any:
        """One open session's record."""
        record = self.sessions.get(session_id)
        if record is None:
            return Failure(SessionNotFound(f"no open session {session_id}").to_dict())
        return dict(record)

    def list_sessions(self, pool_name: str | None = None) -> list[dict[str, Any]]:
        """Open sessions, optionally of one pool."""
        return [dict(r) for r in self.sessions.values() if pool_name is None or r["pool"] == pool_name]

    def put_checkpoint(self, key: str, blob: bytes) -> None:
        """Persist a checkpoint (called by actors before they answer)."""
        self.store.put_checkpoint(key, blob)

    def _session_counts(self, pool_name: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for record in self.sessions.values():
            if record["pool"] == pool_name:
                counts[record["slot"]] = counts.get(record["slot"], 0) + 1
        return counts

    async def _reap_sessions(self) -> None:
        now = time.time()
        for sid, record in list(self.sessions.items()):
            pool = self.pools[record["pool"]]
            slot = pool.slots[record["slot"]]
            record["last_used"] = max(record["last_used"], slot.stats.get("sessions", {}).get(sid, 0.0))
            idle = pool.spec.sessions.idle_timeout_s
            if idle is not None and now - record["last_used"] > idle:
                await self.close_session(sid, f"idle for more than {idle:g}s")
            elif record["ttl_s"] is not None and now - record["created"] > record["ttl_s"]:
                await self.close_session(sid, f"ttl of {record['ttl_s']:g}s reached")

    # ------------------------------------------------------------- routing
    async def routing(self, known_version: int = -1, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The routing table, or None if it is still ``known_version`` after ``wait_s`` (long poll)."""
        if known_version == self.version and wait_s > 0 and self.changed is not None:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.version != known_version), wait_s)
        if known_version == self.version:
            return None
        return self._table()

    def _table(self) -> dict[str, Any]:
        pools = {}
        for pool in self.pools.values():
            owned = {r["slot"] for r in self.sessions.values() if r["pool"] == pool.name}
            exclusive = pool.spec.sessions.per_worker == 1
            pools[pool.name] = {
                "state": pool.state,
                "reason": pool.reason,
                "ops": pool.ops,
                "limits": pool.spec.limits.model_dump(),
                "actors": {
                    s.index: {
                        "gen": s.gen,
                        "handle": s.handle,
                        "actor_id": s.actor_id,
                        "stateless": not (exclusive and s.index in owned),
                    }
                    for s in pool.slots
                    if s.state == "ready"
                },
            }
        return {"version": self.version, "pools": pools}

    async def _bump(self) -> None:
        self.version += 1
        if self.changed is not None:
            async with self.changed:
                self.changed.notify_all()

    # ----------------------------------------------------------------- jobs
    async def submit_job(
        self, pool: str, op: str, args: dict[str, Any], session: str | None = None, max_retries: int | None = None
    ) -> Any:
        """Queue a job; returns its record (or a Failure for a bad pool, op or arguments)."""
        return await self.jobs.submit(pool, op, args, session, max_retries)

    def get_job(self, job_id: str) -> Any:
        """One job's record."""
        return self.jobs.get(job_id)

    def list_jobs(self, pool: str | None = None, status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return self.jobs.list(pool, status, limit)

    async def job_events(self, job_id: str, after: int = 0, wait_s: float = 0.0) -> Any:
        """Logged events after a sequence number (long poll)."""
        return await self.jobs.events(job_id, after, wait_s)

    async def cancel_job(self, job_id: str) -> Any:
        """Cancel a job (a no-op answer for a finished one)."""
        return await self.jobs.cancel(job_id)

    async def job_checkpoint(self, job_id: str, blob: bytes, position: int) -> None:
        """Called by the actor running a job: persist its resume point."""
        await self.jobs.checkpoint(job_id, blob, position)

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Every pool: state, actors, sessions, counters and recent events."""
        out = {}
        jobs = self.jobs.counts()
        for pool in self.pools.values():
            counts = self._session_counts(pool.name)
            out[pool.name] = {
                "name": pool.name,
                "state": pool.state,
                "reason": pool.reason,
                "worker": pool.spec.worker,
                "size": pool.spec.size.model_dump(),
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
        await self._bump()
        live = [(p, s) for p in self.pools.values() for s in p.slots if s.state in ("ready", "draining")]

        async def stop(pool: PoolState, slot: ActorSlot) -> int:
            try:
                await slot.handle.drain.remote(drain_s, "shutting down")
                states = await slot.handle.export_sessions.remote()
                for sid, blob in states.items():
                    self.store.put_checkpoint(f"session:{sid}", blob)
                await slot.handle.stop.remote()
            except RayActorError:
                states = {}
            ray.kill(slot.handle, no_restart=True)
            slot.state = "stopped"
            return len(states)

        saved = await asyncio.gather(*(stop(p, s) for p, s in live))
        for pool in self.pools.values():
            for slot in pool.slots:
                if slot.handle is not None and slot.state != "stopped":
                    ray.kill(slot.handle, no_restart=True)
                    slot.state = "stopped"
        running = [run.task for run in self.jobs.runs.values() if run.task is not None]
        if running:  # let interrupted jobs record themselves as queued before the store closes
            await asyncio.wait(running, timeout=5.0)
        self.store.close()
        return {"actors_stopped": len(live), "sessions_checkpointed": sum(saved)}


def _nodes() -> list[dict[str, dict[str, float]]]:
    from ray._private.state import available_resources_per_node

    available = available_resources_per_node()
    return [
        {"total": node["Resources"], "available": available.get(node["NodeID"], {})}
        for node in ray.nodes()
        if node["Alive"]
    ]


def _pending_demands() -> list[dict[str, float]]:
    """Resource shapes Ray has not been able to place (its autoscaler's view)."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # an older or unusual cluster: fall back to "no known demand"
        return []
    return [
        dict(by_count.bundle)
        for demand in status.resource_demands.ray_task_actor_demand
        for by_count in demand.bundles_by_count
    ]


async def _as_future(ref: Any) -> Any:
    return await ref


def coordinator_class() -> Any:
    """The Coordinator as a Ray actor class."""
    return ray.remote(num_cpus=0, max_restarts=0)(Coordinator)
