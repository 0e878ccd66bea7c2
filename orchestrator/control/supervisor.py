"""The supervisor: launches each pool's actors, pings them, and restarts or recycles them (the OTP part).

A dead or hung actor is replaced in its slot (a new generation) unless the
pool's restart intensity is exceeded, which fails the pool. An actor that
reports itself past ``max_memory`` or ``max_calls`` is drained, its sessions
exported, and replaced. Every state change bumps the routing table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RuntimeEnvSetupError

from orchestrator.config.envs import runtime_env
from orchestrator.config.schema import Config
from orchestrator.control import cluster
from orchestrator.control.pools import ActorSlot, PoolState, demanded, pending_reason
from orchestrator.control.routing import RoutingTable
from orchestrator.control.sessions import SessionTable
from orchestrator.errors import first_line
from orchestrator.runtime.host import actor_class
from orchestrator.types import COORDINATOR_NAME

PENDING_AFTER_S = 1.0  # an actor not ready after this long gets a reason (resources, env build)
DRAIN_S = 30.0

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Supervisor:
    """Starts, watches, restarts and recycles the actors of every pool."""

    def __init__(
        self,
        config: Config,
        pools: Mapping[str, PoolState],
        routing: RoutingTable,
        sessions: SessionTable,
        spawn: Spawn,
    ) -> None:
        self.config = config
        self.pools = pools
        self.routing = routing
        self.sessions = sessions
        self.spawn = spawn

    # ---------------------------------------------------------------- launch
    def launch(self, pool: PoolState, slot: ActorSlot) -> None:
        """Start the slot's actor (its current generation) and watch it become ready."""
        spec = pool.spec
        env_dir = self.config.env_dir(pool.name)
        options: dict[str, Any] = {
            "name": slot.name,
            "namespace": self.config.ray.namespace,
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
                self.config.ray.namespace,
                COORDINATOR_NAME,
                env_file,
                self.config.debug,
            )
        )
        self.spawn(self._await_ready(pool, slot, slot.gen))

    async def _await_ready(self, pool: PoolState, slot: ActorSlot, gen: int) -> None:
        try:
            info = await slot.handle.ready.remote()
        except RuntimeEnvSetupError as exc:
            await self.fail_pool(pool, f"env build failed for {self.config.env_dir(pool.name)}: {exc}")
            return
        except RayActorError as exc:
            if slot.gen == gen and slot.state != "stopped":
                await self._on_death(pool, slot, gen, f"died while starting: {exc}")
            return
        if slot.gen != gen or slot.state in ("stopped", "dead"):
            return
        if info["error"] is not None:
            await self.fail_pool(pool, info["error"]["message"])
            return
        slot.pid, slot.node_id, slot.actor_id = info["pid"], info["node_id"], info["actor_id"]
        pool.ops = info["ops"]
        await self.sessions.restore(pool, slot)
        slot.state, slot.reason, slot.since, slot.last_ping = "ready", None, time.time(), time.monotonic()
        if pool.state == "starting":
            pool.state = "running"
        pool.event("ready", slot.name)
        await self.routing.bump()

    # ------------------------------------------------------------- watching
    async def check(self, pool: PoolState) -> None:
        """One supervision step for a pool: explain actors that wait, ping those due."""
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
            reason = pending_reason(request, cluster.nodes()) if demanded(request, cluster.pending_demands()) else None
            for slot in waiting:
                slot.state, slot.reason = (
                    ("pending", reason) if reason else ("starting", "building env or initializing")
                )
        for slot in pool.slots:
            if slot.state == "ready" and not slot.pinging and now - slot.last_ping >= pool.spec.health.period_s:
                slot.pinging = True
                self.spawn(self._ping(pool, slot, slot.gen))

    async def _ping(self, pool: PoolState, slot: ActorSlot, gen: int) -> None:
        try:
            slot.stats = await asyncio.wait_for(_awaited(slot.handle.ping.remote()), pool.spec.health.timeout_s)
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

    async def report_dead(self, pool_name: str, index: int, gen: int) -> None:
        """A caller saw this actor die: check at once instead of at the next ping."""
        pool = self.pools.get(pool_name)
        if pool is None or index >= len(pool.slots):
            return
        slot = pool.slots[index]
        if slot.gen == gen and slot.state == "ready" and not slot.pinging:
            slot.pinging = True
            await self._ping(pool, slot, gen)

    # -------------------------------------------------------- restart, recycle
    async def _on_death(self, pool: PoolState, slot: ActorSlot, gen: int, reason: str) -> None:
        if slot.gen != gen or slot.state in ("dead", "stopped") or pool.state in ("failed", "stopped"):
            return
        slot.state, slot.reason = "dead", reason
        pool.event("died", slot.name, reason)
        await self.routing.bump()
        if not pool.intensity.allow():
            spec = pool.spec.restart
            why = f"restart intensity exceeded: more than {spec.max_restarts} restarts in {spec.within_s:g}s"
            await self.fail_pool(pool, f"{why}; last: {reason}")
            return
        pool.counters["restarts"] += 1
        slot.gen += 1
        pool.event("restarting", slot.name, reason)
        self.launch(pool, slot)

    async def fail_pool(self, pool: PoolState, reason: str) -> None:
        """Stop every actor of a pool and mark it failed (restart intensity exceeded, env or init error)."""
        if pool.state == "failed":
            return
        pool.state, pool.reason = "failed", reason
        pool.event("failed", None, reason)
        for slot in pool.slots:
            if slot.handle is not None and slot.state != "dead":
                ray.kill(slot.handle, no_restart=True)
            slot.state = "stopped"
        await self.routing.bump()

    async def recycle(self, pool_name: str, index: int, gen: int, reason: str) -> None:
        """An actor passed max_memory or max_calls: replace it after its current calls."""
        pool = self.pools[pool_name]
        slot = pool.slots[index]
        if slot.gen != gen or slot.state != "ready":
            return
        old = slot.handle
        slot.state, slot.reason = "draining", reason
        pool.event("recycle", slot.name, reason)
        pool.counters["recycles"] += 1
        await self.routing.bump()
        self.sessions.save_states(await _stop_actor(old, DRAIN_S, reason))  # the replacement restores them
        slot.gen += 1
        self.launch(pool, slot)

    async def stop_all(self, drain_s: float) -> dict[str, int]:
        """Graceful shutdown of every actor: drain, checkpoint sessions, let the worker close, kill."""
        live = [s for p in self.pools.values() for s in p.slots if s.state in ("ready", "draining")]

        async def stop(slot: ActorSlot) -> int:
            states = await _stop_actor(slot.handle, drain_s, "shutting down")
            self.sessions.save_states(states)
            slot.state = "stopped"
            return len(states)

        saved = await asyncio.gather(*(stop(s) for s in live))
        for pool in self.pools.values():
            for slot in pool.slots:
                if slot.handle is not None and slot.state != "stopped":
                    ray.kill(slot.handle, no_restart=True)
                    slot.state = "stopped"
        return {"actors_stopped": len(live), "sessions_checkpointed": sum(saved)}


async def _stop_actor(handle: Any, drain_s: float, reason: str) -> dict[str, bytes]:
    """Drain an actor, export its sessions, let its worker close, then kill it; returns the sessions' states."""
    try:
        await handle.drain.remote(drain_s, reason)
        states: dict[str, bytes] = await handle.export_sessions.remote()
        await handle.stop.remote()
    except RayActorError:
        states = {}
    ray.kill(handle, no_restart=True)
    return states


async def _awaited(ref: Any) -> Any:
    return await ref
