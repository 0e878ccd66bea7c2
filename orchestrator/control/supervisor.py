"""The supervisor: launches each pool's actors, pings them, and restarts or recycles them (the OTP part).

A dead or hung actor is replaced in its slot (a new generation) unless the
pool's restart intensity is exceeded, which fails the pool. An actor that
reports itself past ``max_memory`` or ``max_calls`` is drained, its sessions
exported, and replaced. Every state change bumps the routing table.

Pool actors are named and detached: they outlive the coordinator. A restarted
coordinator ``adopt``s the ones it finds alive by name (same pool, slot and
spec), kills strays, and launches the rest. Every await on an actor is
bounded, and a failure in any step is logged with the pool and actor and
ends in a restart of that actor, never in a slot left "starting".
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RuntimeEnvSetupError

from orchestrator import metrics
from orchestrator.checkpoints import STORE_ID_ENV, STORE_NODE_ENV
from orchestrator.config.envs import code_modules, runtime_env
from orchestrator.config.schema import Config
from orchestrator.contract.paths import CODE_ENV, STATE_DIR_ENV
from orchestrator.control import cluster
from orchestrator.control.cluster import ask
from orchestrator.control.pools import ActorSlot, PoolState, demanded, pending_reason
from orchestrator.control.routing import RoutingTable
from orchestrator.control.sessions import SessionTable
from orchestrator.errors import PoolNotFound, first_line
from orchestrator.runtime.host import actor_class, spec_hash
from orchestrator.types import COORDINATOR_NAME, Failure

log = logging.getLogger("orchestrator.supervisor")

PENDING_AFTER_S = 1.0  # an actor not ready after this long gets a reason (resources, env build)
DRAIN_S = 30.0
MAX_RETRY_BACKOFF_S = 600.0

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
        store_id: str,
    ) -> None:
        self.config = config
        # Where the store is: an actor on this node writes its sessions' checkpoints into it itself.
        self.store_env = {STORE_ID_ENV: store_id, STORE_NODE_ENV: ray.get_runtime_context().get_node_id()}
        self.pools = pools
        self.routing = routing
        self.sessions = sessions
        self.spawn = spawn
        self.next_gen: dict[tuple[str, int], int] = {}  # after a stray is killed, its slot's next generation
        self.replay: Callable[[PoolState, ActorSlot], Coroutine[Any, Any, None]] | None = None  # pool-wide calls
        workers = [spec.worker for spec in config.pools.values()]
        self.code = code_modules(workers, config.base_dir, config.code) if config.ray.ship_code else []  # every node

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
            "max_restarts": 0,  # the supervisor restarts it (with its sessions), not Ray
            "lifetime": "detached",  # it outlives the coordinator, which adopts it after a restart
            "runtime_env": runtime_env(
                spec,
                env_dir,
                {STATE_DIR_ENV: str(self.config.state_path()), CODE_ENV: ",".join(self.config.code), **self.store_env},
                cluster.ship(self.code),
            ),
        }
        if spec.resources.memory:
            options["memory"] = spec.resources.memory
        if spec.resources.custom:
            options["resources"] = dict(spec.resources.custom)
        env_file = str(Path(env_dir, "requirements.txt")) if env_dir else None
        slot.state, slot.reason, slot.since = "starting", None, time.time()
        slot.stats, slot.pid, slot.actor_id = {}, None, None  # a new process: none of the old one's numbers
        slot.handle = (
            actor_class(pool.name, spec.worker)
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
            info = await self._ready_answer(slot, gen)
        except RuntimeEnvSetupError as exc:
            await self.fail_pool(pool, f"env build failed for {self.config.env_dir(pool.name)}: {exc}")
            return
        except RayActorError as exc:
            if slot.gen == gen and slot.state != "stopped":
                await self._on_death(pool, slot, gen, f"died while starting: {exc}")
            return
        except TimeoutError:
            await self._replace(pool, slot, gen, f"not ready within start_timeout_s ({self.config.start_timeout_s:g}s)")
            return
        if info is None or slot.gen != gen or slot.state in ("stopped", "dead"):
            return
        if info["error"] is not None:
            await self.fail_pool(pool, info["error"]["message"])
            return
        await self._take(pool, slot, gen, info, frozenset(), "ready")

    async def _ready_answer(self, slot: ActorSlot, gen: int) -> dict[str, Any] | None:
        """The actor's ready() answer; time spent pending for resources does not count against start_timeout_s."""
        ref = slot.handle.ready.remote()
        starting = 0.0
        while True:
            try:
                return dict(await ask(ref, 1.0))
            except TimeoutError:
                if slot.gen != gen or slot.state in ("stopped", "dead"):
                    return None
                if slot.state != "pending":
                    starting += 1.0
                    if starting >= self.config.start_timeout_s:
                        raise

    async def _take(
        self, pool: PoolState, slot: ActorSlot, gen: int, info: dict[str, Any], held: frozenset[str], event: str
    ) -> None:
        """Make a slot's live actor ready: give it its sessions, then route to it."""
        slot.pid, slot.node_id, slot.actor_id = info["pid"], info["node_id"], info["actor_id"]
        pool.ops = info["ops"]
        try:
            await self.sessions.restore(pool, slot, held)
        except Exception as exc:  # a stuck or dead actor: replace it (the sessions stay for the next one)
            log.exception("pool %s, actor %s: giving the actor its sessions failed", pool.name, slot.name)
            await self._replace(pool, slot, gen, f"restoring sessions failed: {first_line(exc)}")
            return
        if event == "ready" and self.replay is not None:  # a new process: give it the remembered pool-wide calls
            await self.replay(pool, slot)
        if slot.gen != gen or slot.state in ("stopped", "dead"):
            return
        slot.state, slot.reason, slot.since, slot.last_ping = "ready", None, time.time(), time.monotonic()
        if pool.state == "starting":
            pool.state = "running"
        pool.event(event, slot.name)
        await self.routing.bump()

    async def _replace(self, pool: PoolState, slot: ActorSlot, gen: int, reason: str) -> None:
        """Kill a slot's actor that misbehaves and restart it (within the restart intensity)."""
        if slot.gen != gen:
            return
        log.error("pool %s, actor %s: %s", pool.name, slot.name, reason)
        ray.kill(slot.handle, no_restart=True)
        await self._on_death(pool, slot, gen, reason)

    # -------------------------------------------------------------- adoption
    async def find_actors(self) -> dict[tuple[str, int], tuple[Any, dict[str, Any]]]:
        """After a coordinator restart: the live pool actors to adopt, by (pool, slot). Strays (a pool or
        slot no longer configured, a changed spec, a duplicate, no answer) are killed."""
        namespace = self.config.ray.namespace
        names = await asyncio.to_thread(cluster.named_actors, namespace)
        ours = re.compile(rf"^({'|'.join(map(re.escape, self.pools)) or '$^'})-(\d+)(?:\.\d+)?$")
        found: dict[tuple[str, int], tuple[Any, dict[str, Any]]] = {}
        for name in names:
            if name == COORDINATOR_NAME or not ours.match(name):
                continue
            try:
                handle = ray.get_actor(name, namespace=namespace)
                info = dict(await ask(handle.ready.remote(), 5.0))
            except (ValueError, RayActorError):
                continue  # gone already
            except (TimeoutError, AttributeError) as exc:
                log.warning("killing actor %s: it does not answer as a pool actor (%s)", name, type(exc).__name__)
                ray.kill(handle, no_restart=True)
                continue
            key = (info["pool"], info["slot"])
            pool = self.pools.get(info["pool"])
            keep = (
                pool is not None
                and info["slot"] < max(len(pool.slots), pool.spec.size.max or 0)  # autoscaled ones too
                and info["error"] is None
                and info["spec_hash"] == spec_hash(pool.spec.model_dump())
            )
            if keep and key in found and found[key][1]["gen"] > info["gen"]:
                keep = False  # a newer actor holds the slot
            if keep and key in found:
                self._kill_stray(found.pop(key), "an older duplicate of its slot")
            if keep:
                found[key] = (handle, info)
            else:
                self._kill_stray((handle, info), "its pool, slot or spec is not the configured one")
        return found

    def _kill_stray(self, actor: tuple[Any, dict[str, Any]], why: str) -> None:
        handle, info = actor
        log.warning("killing stray actor of pool %s slot %s: %s", info["pool"], info["slot"], why)
        key = (info["pool"], info["slot"])
        self.next_gen[key] = max(self.next_gen.get(key, 0), info["gen"] + 1)
        ray.kill(handle, no_restart=True)

    async def adopt(self, pool: PoolState, slot: ActorSlot, handle: Any, info: dict[str, Any]) -> None:
        """Take over a live actor a previous coordinator started: its generation, sessions and ops.

        Job calls it was running for the previous coordinator are cancelled: the jobs are re-run from
        their checkpoints, and their events are logged exactly once.
        """
        slot.gen, slot.handle = info["gen"], handle
        slot.state, slot.since = "starting", time.time()
        for call_id in info["jobs"]:
            handle.cancel.remote(call_id)
        await self._take(pool, slot, slot.gen, info, frozenset(info["sessions"]), "adopted")
        if info["recycling"] and slot.state == "ready":  # it was being recycled: finish the job
            self.spawn(self.recycle(pool.name, slot.index, slot.gen, info["recycling"]))

    def first_gen(self, pool: PoolState, slot: ActorSlot) -> None:
        """Start a slot past any generation a stray of it had (its reports must not be taken for the new one's)."""
        slot.gen = self.next_gen.get((pool.name, slot.index), 0)

    # ------------------------------------------------------------- watching
    async def check(self, pool: PoolState) -> None:
        """One supervision step for a pool: explain actors that wait, ping those due."""
        if pool.state == "failed":
            await self._maybe_retry(pool)
        if pool.state in ("failed", "stopped"):
            return
        now = time.monotonic()
        waiting = [
            s for s in pool.slots if s.state in ("starting", "pending") and time.time() - s.since > PENDING_AFTER_S
        ]
        if waiting:
            request = pool.resource_request()
            # Only an unplaced demand of our shape means "waiting for resources"; otherwise Ray has
            # placed the actor and it is building its env or running its constructor. (GCS calls: off the loop.)
            demands = await asyncio.to_thread(cluster.pending_demands)
            nodes = await asyncio.to_thread(cluster.nodes) if demanded(request, demands) else None
            reason = pending_reason(request, nodes) if nodes is not None else None
            for slot in waiting:
                if slot.state not in ("starting", "pending"):
                    continue  # it became ready (or died) while the cluster was asked
                slot.state, slot.reason = (
                    ("pending", reason) if reason else ("starting", "building env or initializing")
                )
        for slot in pool.slots:
            if slot.state == "ready" and not slot.pinging and now - slot.last_ping >= pool.spec.health.period_s:
                slot.pinging = True
                self.spawn(self._ping(pool, slot, slot.gen))

    async def _ping(self, pool: PoolState, slot: ActorSlot, gen: int) -> None:
        try:
            slot.stats = await ask(slot.handle.ping.remote(), pool.spec.health.timeout_s)
            tags = {"pool": pool.name, "actor": slot.name}
            metrics.actor_rss().set(slot.stats.get("rss") or 0, tags=tags)
            metrics.actor_gpu_memory().set(slot.stats.get("gpu_memory") or 0, tags=tags)
        except TimeoutError:  # ask() bounds the ping
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
        _forget_actor(pool.name, slot.name)
        await self.routing.bump()
        if not pool.intensity.allow():
            spec = pool.spec.restart
            why = f"restart intensity exceeded: more than {spec.max_restarts} restarts in {spec.within_s:g}s"
            await self.fail_pool(pool, f"{why}; last: {reason}")
            return
        pool.counters["restarts"] += 1
        metrics.restarts().inc(tags={"pool": pool.name, "reason": restart_reason(reason)})
        slot.next_generation(reason)
        pool.event("restarting", slot.name, reason)
        self.launch(pool, slot)

    async def fail_pool(self, pool: PoolState, reason: str) -> None:
        """Stop every actor of a pool and mark it failed (restart intensity exceeded, env or init error)."""
        if pool.state == "failed":
            return
        pool.state, pool.reason, pool.failed_at = "failed", reason, time.monotonic()
        pool.event("failed", None, reason)
        for slot in pool.slots:
            if slot.handle is not None and slot.state != "dead":
                ray.kill(slot.handle, no_restart=True)
            slot.state = "stopped"
        await self.routing.bump()

    async def _maybe_retry(self, pool: PoolState) -> None:
        """``restart.retry_after_s``: start a failed pool again after a backoff that doubles with each try."""
        first = pool.spec.restart.retry_after_s
        if first is None:
            return
        backoff = min(first * 2**pool.retries, MAX_RETRY_BACKOFF_S)
        if time.monotonic() - pool.failed_at >= backoff:
            pool.retries += 1
            await self.restart_pool(pool.name, f"retry {pool.retries} after {backoff:g}s")

    async def restart_pool(self, name: str, why: str = "by request") -> Any:
        """Start a failed or stopped pool again (a fresh restart intensity); its sessions are restored."""
        pool = self.pools.get(name)
        if pool is None:
            known = ", ".join(sorted(self.pools))
            return Failure(PoolNotFound(f"no pool {name!r} (pools: {known})", pool=name).to_dict())
        if pool.state not in ("failed", "stopped"):
            message = f"pool is {pool.state}: only a failed or stopped pool is restarted"
            return {"pool": name, "restarted": False, "message": message}
        previous = pool.reason
        pool.state, pool.reason = "starting", None
        pool.intensity.times.clear()
        if why == "by request":
            pool.retries = 0  # an operator's restart starts the automatic backoff over
        pool.event("restart", None, f"restarted {why} (was: {previous})")
        for slot in pool.slots:
            slot.next_generation(f"pool restarted {why}")
            self.launch(pool, slot)
        await self.routing.bump()
        return {"pool": name, "restarted": True, "message": f"restarting {len(pool.slots)} actor(s)"}

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
        metrics.restarts().inc(tags={"pool": pool.name, "reason": restart_reason(reason)})
        await self.routing.bump()
        await self.sessions.save_states(await _stop_actor(old, DRAIN_S, reason))  # the replacement restores them
        _forget_actor(pool.name, slot.name)
        slot.next_generation(f"recycled: {reason}")
        self.launch(pool, slot)

    # ------------------------------------------------------------ autoscaling
    def add_actor(self, pool: PoolState, reason: str) -> None:
        """Grow the pool by one slot at its end and start its actor."""
        slot = ActorSlot(pool.name, len(pool.slots))
        self.first_gen(pool, slot)
        pool.slots.append(slot)
        pool.event("scale_up", slot.name, reason)
        metrics.scaled().inc(tags={"pool": pool.name, "direction": "up"})
        metrics.pool_actors().set(len(pool.slots), tags={"pool": pool.name})
        self.launch(pool, slot)

    async def remove_actor(self, pool: PoolState, slot: ActorSlot, reason: str) -> None:
        """Shrink the pool by its last slot: routed away from, drained (in-flight calls finish), stopped."""
        pool.event("scale_down", slot.name, reason)
        metrics.scaled().inc(tags={"pool": pool.name, "direction": "down"})
        self.next_gen[(pool.name, slot.index)] = slot.gen + 1  # a slot added again later gets a fresh name
        if slot.state == "ready":
            slot.state, slot.reason = "draining", f"scaling down: {reason}"
            await self.routing.bump()
            await self.sessions.save_states(await _stop_actor(slot.handle, DRAIN_S, "scaling down"))
        elif slot.handle is not None:  # still starting or pending: nothing to drain
            slot.state = "stopped"
            ray.kill(slot.handle, no_restart=True)
        slot.state = "stopped"
        _forget_actor(pool.name, slot.name)
        if pool.slots and pool.slots[-1] is slot:
            pool.slots.pop()
        metrics.pool_actors().set(len(pool.slots), tags={"pool": pool.name})
        await self.routing.bump()

    async def stop_all(self, drain_s: float) -> dict[str, int]:
        """Graceful shutdown of every actor: drain, checkpoint sessions, let the worker close, kill."""
        live = [s for p in self.pools.values() for s in p.slots if s.state in ("ready", "draining")]

        async def stop(slot: ActorSlot) -> int:
            states = await _stop_actor(slot.handle, drain_s, "shutting down")
            await self.sessions.save_states(states)
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
    """Drain an actor, export its sessions, let its worker close, then kill it; returns the sessions' states.

    Each step is bounded: a stuck actor is killed with whatever it exported (its sessions then restore
    from their last checkpoints)."""
    states: dict[str, bytes] = {}
    try:
        await ask(handle.drain.remote(drain_s, reason), drain_s + 5.0)
        states = await ask(handle.export_sessions.remote())
        await ask(handle.stop.remote())
    except Exception as exc:  # dead, stuck, or a session state that would not pickle
        log.warning("stopping an actor (%s): %s; killing it", reason, first_line(exc))
    ray.kill(handle, no_restart=True)
    return states


def restart_reason(reason: str) -> str:
    """The ``reason`` label of the restarts metric: crash, hung, memory or max_calls."""
    lowered = reason.lower()
    if lowered.startswith("hung"):
        return "hung"
    if lowered.startswith("max_calls"):
        return "max_calls"
    if lowered.startswith("max_memory") or "out of memory" in lowered or "oom" in lowered:
        return "memory"
    return "crash"


def _forget_actor(pool: str, actor: str) -> None:
    """A replaced actor's memory series end with it."""
    for gauge in (metrics.actor_rss(), metrics.actor_gpu_memory()):
        gauge.forget({"pool": pool, "actor": actor})
