"""Pool-wide calls: an op run on every actor of a pool, and remembered ones replayed on actors that start later.

An op marked ``@op(pool_wide=True)`` (or ``remember=``/``forget=``) is sent by
callers to the coordinator, which runs it on every ready actor at once. The
caller gets the first actor's result; if every actor failed, the first error
(and nothing is remembered); an actor that failed while others succeeded is
recycled, and its replacement replays the remembered calls, so the pool
converges. A ``remember`` key (formatted from the arguments, e.g.
``adapter:{name}``) keeps the call in the store, replacing one of the same key;
every actor that starts later (a restart, a recycle, a new slot) gets the
remembered calls, oldest first, before any call is routed to it. ``forget``
drops a key. Replayed calls must be idempotent: an actor starting during a
pool-wide call may get it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayActorError

from orchestrator.control.cluster import ask
from orchestrator.control.pools import ActorSlot, PoolState
from orchestrator.control.store import Store
from orchestrator.errors import InvalidArguments, OpNotFound, PoolUnavailable, WorkerCrashed, first_line
from orchestrator.types import Failure

log = logging.getLogger("orchestrator.poolcalls")
CALLER = "coordinator"
DEFAULT_TIMEOUT_S = 600.0  # a pool without call_timeout_s: loading a model or adapter may take minutes


class PoolCalls:
    """Runs pool-wide calls and replays the remembered ones (the coordinator's part of ``@op(pool_wide)``)."""

    def __init__(self, store: Store, pools: dict[str, PoolState], recycle: Callable[..., Awaitable[None]]) -> None:
        self.store = store
        self.pools = pools
        self.recycle = recycle  # (pool, index, gen, reason): replace an actor after its current calls
        self.versions: dict[str, int] = {}  # per pool: bumped whenever its remembered calls change
        self.ids = 0

    async def run(self, pool_name: str, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` on every ready actor of the pool; its first result, or a Failure."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return Failure(PoolUnavailable(f"no pool {pool_name!r}", pool=pool_name, op=op).to_dict())
        info = (pool.ops or {}).get(op)
        if info is None:
            known = ", ".join(sorted(pool.ops or {}))
            return Failure(OpNotFound(f"pool {pool_name!r} has no op {op!r} (ops: {known})", pool=pool_name).to_dict())
        try:
            key = _key(info.get("remember") or info.get("forget"), args, pool_name, op)
        except InvalidArguments as exc:
            return Failure(exc.to_dict())
        slots = [slot for slot in pool.slots if slot.state == "ready"]
        if not slots:
            return Failure(PoolUnavailable(f"no ready actor in pool {pool_name!r}", pool=pool_name, op=op).to_dict())
        answers = await asyncio.gather(*(self._call(pool, slot, op, args) for slot in slots))
        results = [a for a in answers if not isinstance(a, Failure)]
        if not results:
            return answers[0]
        if key is not None:
            if info.get("remember"):
                await asyncio.to_thread(self.store.remember_call, pool_name, key, op, args)
            else:
                await asyncio.to_thread(self.store.forget_call, pool_name, key)
            self.versions[pool_name] = self.versions.get(pool_name, 0) + 1
        for slot, answer in zip(slots, answers, strict=True):
            if isinstance(answer, Failure):
                reason = f"pool-wide {op} failed on this actor only: {answer.error.get('message')}"
                pool.event("pool_call_failed", slot.name, reason)
                await self.recycle(pool_name, slot.index, slot.gen, reason)
        late = [slot for slot in pool.slots if slot.state == "ready" and slot not in slots]
        await asyncio.gather(*(self._call(pool, slot, op, args) for slot in late))  # became ready meanwhile
        return results[0]

    async def one(self, pool_name: str, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` on one ready actor of the pool (a check before a pool-wide call); its result, or a Failure."""
        pool = self.pools.get(pool_name)
        slots = [slot for slot in pool.slots if slot.state == "ready"] if pool is not None else []
        if pool is None or not slots:
            message = f"no pool {pool_name!r}" if pool is None else f"no ready actor in pool {pool_name!r}"
            return Failure(PoolUnavailable(message, pool=pool_name, op=op).to_dict())
        return await self._call(pool, slots[0], op, args)

    async def replay(self, pool: PoolState, slot: ActorSlot) -> None:
        """Give a starting actor the pool's remembered calls (again if they changed meanwhile)."""
        while True:
            version = self.versions.get(pool.name, 0)
            for key, op, args in await asyncio.to_thread(self.store.remembered_calls, pool.name):
                answer = await self._call(pool, slot, op, args)
                if isinstance(answer, Failure):  # the actor serves; what failed is named in status
                    reason = f"replaying {key} ({op}) failed: {answer.error.get('message')}"
                    log.warning("pool %s, actor %s: %s", pool.name, slot.name, reason)
                    pool.event("replay_failed", slot.name, reason)
            if self.versions.get(pool.name, 0) == version:
                return

    async def _call(self, pool: PoolState, slot: ActorSlot, op: str, args: dict[str, Any]) -> Any:
        self.ids += 1
        request = (op, args, None, None, CALLER, f"{CALLER}:pool-call:{self.ids}")
        timeout = pool.spec.limits.call_timeout_s or DEFAULT_TIMEOUT_S
        try:
            return await ask(slot.handle.call.remote(request, True), timeout)
        except (RayActorError, TimeoutError) as exc:
            message = f"actor {slot.name}: {first_line(exc) or type(exc).__name__}"
            return Failure(WorkerCrashed(message, pool=pool.name, op=op).to_dict())


def _key(template: str | None, args: dict[str, Any], pool: str, op: str) -> str | None:
    """The remembered call's key, formatted from the call's arguments."""
    if template is None:
        return None
    try:
        return template.format_map(args)
    except (KeyError, IndexError) as exc:
        field = str(exc).strip("'")
        detail = [{"field": field, "message": "required (it names what this pool-wide call keeps)"}]
        raise InvalidArguments(f"{field}: required", pool=pool, op=op, detail=detail) from None
