"""Sessions as the control plane keeps them: placement on an actor, reaping, checkpoints and restore.

A session is pinned to one actor slot. Its record lives here (and in the
store); its state lives on the actor, checkpointed to the store. When the
slot's actor is replaced, the new one is given the checkpointed states before
it takes calls; a session with no checkpoint answers ``session_lost``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ray.exceptions import RayActorError

from orchestrator.control.pools import ActorSlot, PoolState, choose_session_slot
from orchestrator.control.routing import RoutingTable
from orchestrator.control.store import Store
from orchestrator.errors import Overloaded, PoolNotFound, PoolUnavailable, SessionNotFound
from orchestrator.types import Failure, session_key


class SessionTable:
    """Open sessions: their records, which slot holds each, and their lifecycle."""

    def __init__(self, pools: Mapping[str, PoolState], store: Store, routing: RoutingTable) -> None:
        self.pools = pools
        self.store = store
        self.routing = routing
        self.records: dict[str, dict[str, Any]] = {}

    # --------------------------------------------------------------- reading
    def get(self, session_id: str) -> Any:
        """One open session's record, or a session_not_found Failure."""
        record = self.records.get(session_id)
        if record is None:
            return Failure(SessionNotFound(f"no open session {session_id}").to_dict())
        return dict(record)

    def list(self, pool_name: str | None = None) -> list[dict[str, Any]]:
        """Open sessions, optionally of one pool."""
        return [dict(r) for r in self.records.values() if pool_name is None or r["pool"] == pool_name]

    def counts(self, pool_name: str) -> dict[int, int]:
        """Open sessions per slot index of one pool."""
        counts: dict[int, int] = {}
        for record in self.records.values():
            if record["pool"] == pool_name:
                counts[record["slot"]] = counts.get(record["slot"], 0) + 1
        return counts

    def owned_slots(self, pool_name: str) -> set[int]:
        """Slot indexes of a pool that hold at least one session."""
        return set(self.counts(pool_name))

    def slot_of(self, session_id: str) -> tuple[str, int] | None:
        """The pool and slot index a session is pinned to."""
        record = self.records.get(session_id)
        return (record["pool"], record["slot"]) if record else None

    # ------------------------------------------------------------- lifecycle
    async def create(self, pool_name: str, ttl_s: float | None = None) -> Any:
        """Open a session on the least-loaded actor with room; returns its record (or a Failure)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return Failure(PoolNotFound(f"no pool {pool_name!r}", pool=pool_name).to_dict())
        if pool.state != "running":
            return Failure(PoolUnavailable(f"pool is {pool.state}: {pool.reason}", pool=pool_name).to_dict())
        per_worker = pool.spec.sessions.per_worker
        slot = choose_session_slot(pool.slots, self.counts(pool_name), per_worker)
        if slot is None:
            message = f"every actor holds its {per_worker} session(s); close one or add actors"
            return Failure(Overloaded(message, pool=pool_name).to_dict())
        now = time.time()
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "pool": pool_name,
            "slot": slot.index,
            "gen": slot.gen,
            "created": now,
            "last_used": now,
            "ttl_s": ttl_s if ttl_s is not None else pool.spec.sessions.ttl_s,
        }
        await slot.handle.open_session.remote(record["id"])
        self.records[record["id"]] = record
        self.store.put_session(record)
        await self.routing.bump()
        return {k: record[k] for k in ("id", "pool", "slot", "created", "ttl_s")}

    async def close(self, session_id: str, reason: str = "closed by client") -> Any:
        """Close a session and drop its state and checkpoint."""
        record = self.records.pop(session_id, None)
        if record is None:
            return Failure(SessionNotFound(f"no open session {session_id}").to_dict())
        slot = self.pools[record["pool"]].slots[record["slot"]]
        with contextlib.suppress(RayActorError):
            await slot.handle.close_session.remote(session_id, reason)
        self.store.close_session(session_id, reason)
        self.store.delete_checkpoint(session_key(session_id))
        await self.routing.bump()
        return None

    async def reap(self) -> None:
        """Close sessions idle past the pool's ``idle_timeout_s`` or older than their ``ttl_s``."""
        now = time.time()
        for sid, record in list(self.records.items()):
            pool = self.pools[record["pool"]]
            slot = pool.slots[record["slot"]]
            record["last_used"] = max(record["last_used"], slot.stats.get("sessions", {}).get(sid, 0.0))
            idle = pool.spec.sessions.idle_timeout_s
            if idle is not None and now - record["last_used"] > idle:
                await self.close(sid, f"idle for more than {idle:g}s")
            elif record["ttl_s"] is not None and now - record["created"] > record["ttl_s"]:
                await self.close(sid, f"ttl of {record['ttl_s']:g}s reached")

    # ------------------------------------------------------ checkpoints, restore
    def save_states(self, states: dict[str, bytes]) -> None:
        """Checkpoint the session states an actor exported as it stopped (recycle, shutdown)."""
        for sid, blob in states.items():
            self.store.put_checkpoint(session_key(sid), blob)

    async def restore(self, pool: PoolState, slot: ActorSlot) -> None:
        """Give a slot's new actor the checkpointed state of each session pinned there (before it takes calls)."""
        states: dict[str, bytes] = {}
        lost: list[str] = []
        for sid, record in self.records.items():
            if record["pool"] == pool.name and record["slot"] == slot.index and record.get("gen", 0) < slot.gen:
                blob = self.store.get_checkpoint(session_key(sid))
                if blob is None:
                    lost.append(sid)
                else:
                    states[sid] = blob
                record["gen"] = slot.gen
        if states or lost:
            await slot.handle.restore_sessions.remote(states, lost)
            pool.event("sessions_restored", slot.name, f"{len(states)} restored, {len(lost)} lost")
