"""Sessions as the control plane keeps them: placement on an actor, reaping, checkpoints and restore.

A session is pinned to one actor slot. Its record lives here (and in the
store); its state lives on the actor, checkpointed to the store. When the
slot's actor is replaced, the new one is given the checkpointed states before
it takes calls; a session with no checkpoint (or one that cannot be loaded,
which is quarantined) answers ``session_lost``. A restarted coordinator
reloads the open sessions from the store (``load``) and gives each back to its
slot's actor: an adopted actor still holds them; a new one restores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ray.exceptions import RayActorError

from orchestrator import metrics
from orchestrator.control.cluster import ask
from orchestrator.control.pools import ActorSlot, PoolState, choose_session_slot
from orchestrator.control.routing import RoutingTable
from orchestrator.control.store import Store
from orchestrator.errors import (
    InvalidArguments,
    Overloaded,
    PoolNotFound,
    PoolUnavailable,
    SessionLost,
    SessionNotFound,
)
from orchestrator.types import Failure, session_key

log = logging.getLogger("orchestrator.sessions")
LOST = "lost: "  # how the store's close reason marks a session that had nothing to restore it from


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
            return Failure(self._gone(session_id).to_dict())
        return dict(record)

    def _gone(self, session_id: str) -> SessionLost | SessionNotFound:
        reason = self.store.session_closed(session_id)
        if reason is not None and reason.startswith(LOST):
            return SessionLost(f"session {session_id} was {reason}")
        why = f" (closed: {reason})" if reason else ""
        return SessionNotFound(f"no open session {session_id}{why}")

    def list(self, pool_name: str | None = None, limit: int | None = None, after: str | None = None) -> Any:
        """Open sessions, newest first (ties by id), optionally of one pool: at most ``limit``, after session
        ``after`` (the last id of the previous page; a Failure naming ``after`` once it is closed)."""
        rows = [r for r in self.records.values() if pool_name is None or r["pool"] == pool_name]
        rows.sort(key=lambda r: (r["created"], r["id"]), reverse=True)
        if after is not None:
            anchor = self.records.get(after)
            if anchor is None:
                message = f"no open session {after} to list after (closed since? list from the start again)"
                error = InvalidArguments(f"after: {message}", detail=[{"field": "after", "message": message}])
                return Failure(error.to_dict())
            rows = [r for r in rows if (r["created"], r["id"]) < (anchor["created"], anchor["id"])]
        return [dict(r) for r in (rows if limit is None else rows[:limit])]

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
        per_worker, counts = pool.spec.sessions.per_worker, self.counts(pool_name)
        if sum(counts.values()) >= pool.spec.sessions.max_open:
            message = f"the pool holds {pool.spec.sessions.max_open} open sessions (sessions.max_open); close one"
            return Failure(Overloaded(message, pool=pool_name).to_dict())
        slot = choose_session_slot(pool.slots, counts, per_worker)
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
        await ask(slot.handle.open_session.remote(record["id"]))
        await asyncio.to_thread(self.store.put_session, record)
        self.records[record["id"]] = record
        self._gauge(pool_name)
        await self.routing.bump()
        return {k: record[k] for k in ("id", "pool", "slot", "created", "ttl_s")}

    async def close(self, session_id: str, reason: str = "closed by client") -> Any:
        """Close a session and drop its state and checkpoint."""
        record = self.records.pop(session_id, None)
        if record is None:
            return Failure(self._gone(session_id).to_dict())
        slot = self.pools[record["pool"]].slots[record["slot"]]
        if slot.handle is not None:
            with contextlib.suppress(RayActorError, TimeoutError):
                await ask(slot.handle.close_session.remote(session_id, reason))
        await asyncio.to_thread(self._forget, session_id, reason)
        self._gauge(record["pool"])
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

    def _gauge(self, pool_name: str) -> None:
        """The open-sessions gauge of one pool."""
        count = sum(1 for record in self.records.values() if record["pool"] == pool_name)
        metrics.sessions().set(count, tags={"pool": pool_name})

    def _forget(self, session_id: str, reason: str) -> None:
        self.store.close_session(session_id, reason)
        self.store.delete_checkpoint(session_key(session_id))

    # ------------------------------------------------------ checkpoints, restore
    def load(self) -> int:
        """Reload the open sessions a previous coordinator left in the store; each is given back to its
        slot's actor when that actor is adopted or started (``restore``)."""
        now = time.time()
        for row in self.store.open_sessions():
            pool = self.pools.get(row["pool"])
            if pool is None or not pool.slots:
                self._forget(row["id"], f"{LOST}its pool {row['pool']!r} is no longer configured")
                continue
            if row["slot"] >= len(pool.slots):  # the pool shrank: the session moves to a slot that exists
                row["slot"] %= len(pool.slots)
                self.store.put_session(row)
            self.records[row["id"]] = {**row, "gen": -1, "last_used": now}
        for name in self.pools:
            self._gauge(name)
        return len(self.records)

    async def save_states(self, states: dict[str, bytes]) -> None:
        """Checkpoint the session states an actor exported as it stopped (recycle, shutdown)."""
        for sid, blob in states.items():
            await asyncio.to_thread(self.store.put_checkpoint, session_key(sid), blob)

    async def restore(self, pool: PoolState, slot: ActorSlot, held: frozenset[str] = frozenset()) -> None:
        """Give a slot's actor the checkpointed state of each session pinned there that it does not hold
        (``held``: what an adopted actor still has), before it takes calls. A session with no checkpoint,
        or one the actor cannot load (quarantined), is lost: its record is closed saying so."""
        states: dict[str, bytes] = {}
        lost: list[str] = []
        for sid, record in list(self.records.items()):
            if record["pool"] != pool.name or record["slot"] != slot.index or record["gen"] >= slot.gen:
                continue
            record["gen"] = slot.gen
            if sid in held:
                continue
            blob = await asyncio.to_thread(self.store.get_checkpoint, session_key(sid))
            if blob is None:
                lost.append(sid)
            else:
                states[sid] = blob
        if not states and not lost:
            return
        bad: dict[str, str] = await ask(slot.handle.restore_sessions.remote(states, lost))
        for sid, why in bad.items():
            log.error("pool %s, actor %s: checkpoint of session %s unreadable (%s)", pool.name, slot.name, sid, why)
            await asyncio.to_thread(self.store.quarantine_checkpoint, session_key(sid))
            pool.event("checkpoint_quarantined", slot.name, f"session {sid}: {why}")
        for sid in lost:
            await self._lose(sid, f"{LOST}its actor {slot.name} was replaced and it had no checkpoint")
        for sid, why in bad.items():
            await self._lose(sid, f"{LOST}its checkpoint could not be loaded ({why}); quarantined")
        restored = len(states) - len(bad)
        pool.event("sessions_restored", slot.name, f"{restored} restored, {len(lost) + len(bad)} lost")
        if restored:  # Ray's counters refuse an increment of 0
            metrics.sessions_restored().inc(restored, tags={"pool": pool.name})
        if lost or bad:
            metrics.sessions_lost().inc(len(lost) + len(bad), tags={"pool": pool.name})
        self._gauge(pool.name)

    async def _lose(self, session_id: str, reason: str) -> None:
        self.records.pop(session_id, None)
        await asyncio.to_thread(self.store.close_session, session_id, reason)
