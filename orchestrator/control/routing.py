"""The routing table: which actors of each pool are ready, versioned and long-polled by every router.

The coordinator is its single writer (``bump`` after any change); routers in
the gateway and in each caller long-poll ``wait`` and keep calling actors
directly from the last table they got, so calls go on while the coordinator is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.control.pools import PoolState


class RoutingTable:
    """Builds the table from the pools' state; wakes long-polling routers when it changes."""

    def __init__(self, pools: Mapping[str, PoolState], owned_slots: Callable[[str], set[int]]) -> None:
        self.pools = pools
        self.owned_slots = owned_slots  # slots holding a session (exclusive pools keep them off stateless calls)
        # Starts from the clock, so a restarted coordinator's versions are newer than any a router holds.
        self.version = int(time.time() * 1000)
        self.changed = asyncio.Condition()

    async def bump(self) -> None:
        """A new version: routers long-polling the old one get the new table."""
        self.version += 1
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, known_version: int = -1, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The table, or None if it is still ``known_version`` after ``wait_s`` (long poll)."""
        if known_version == self.version and wait_s > 0:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.version != known_version), wait_s)
        if known_version == self.version:
            return None
        return self.table()

    def table(self) -> dict[str, Any]:
        """Every pool's state, ops, limits and ready actors (handle, id, generation)."""
        pools = {}
        for pool in self.pools.values():
            owned = self.owned_slots(pool.name)
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
