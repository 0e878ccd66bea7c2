"""Group commit for job events: every running job's events go to the store together, one transaction per flush.

A job run hands each event to :class:`EventLog` and goes on reading its
generator; one writer task takes everything handed over since its last write
and commits it in one transaction, off the event loop (the store's writes run
on a worker thread). While a write is in flight, new events gather for the
next one, so the more events arrive at once, the more each commit carries.
An event is visible (``committed`` is called, readers are woken) only once its
transaction has committed. A job's checkpoint is handed over the same way, after
the events before it: it commits with them or after them, never before, and a
batch holding one is synced to disk as it commits. So do changes to job records
(a job started, a job finished with its result): many jobs starting and finishing
together share one synced commit instead of paying one each. The log holds at most
``LIMIT`` uncommitted events: a run handing over more waits for room.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.control.store import Store

log = logging.getLogger("orchestrator.jobs")
LIMIT = 10_000  # uncommitted events held at most (memory bound when the disk is slower than the jobs)
RETRY_S = 0.5  # after a failed write (a full disk...): the batch is kept and written again


class EventLog:
    """Job events waiting for their commit, and the task that commits them in batches."""

    def __init__(self, store: Store, committed: Callable[[dict[str, int]], Awaitable[None]]) -> None:
        self.store = store
        self.committed = committed  # (last seq per job in the batch): called after each commit
        self.pending: list[tuple[str, int, Any]] = []
        self.checkpoints: dict[str, bytes] = {}  # job id -> its latest checkpoint, pickled (resume blob, position)
        self.updates: dict[str, dict[str, Any]] = {}  # job id -> columns of its record to set (later ones win)
        self.taken = 0  # batches taken for writing; an event added now goes out with batch ``taken + 1``
        self.flushes = 0  # batches committed
        self.changed = asyncio.Condition()
        self.writer: asyncio.Task[None] | None = None

    async def add(self, events: list[tuple[str, int, Any]]) -> int:
        """Hand over events ``(job id, seq, data)``, in order; returns the number of the batch that will carry
        them (for :meth:`written`)."""
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.pending) < LIMIT)
            self.pending.extend(events)
            batch = self.taken + 1
            self.changed.notify_all()
        self._start_writer()
        return batch

    async def checkpoint(self, job_id: str, position: int, blob: bytes) -> int:
        """Hand over a job's checkpoint taken after its ``position`` events; returns its batch's number."""
        async with self.changed:
            self.checkpoints[job_id] = pickle.dumps((blob, position))  # a later one in the same batch replaces it
            batch = self.taken + 1
            self.changed.notify_all()
        self._start_writer()
        return batch

    async def update(self, job_id: str, **fields: Any) -> int:
        """Hand over a change to a job's record (after its events handed over so far); returns its batch's number."""
        async with self.changed:
            self.updates[job_id] = {**self.updates.get(job_id, {}), **fields}
            batch = self.taken + 1
            self.changed.notify_all()
        self._start_writer()
        return batch

    def _start_writer(self) -> None:
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write())

    async def written(self, batch: int) -> None:
        """Wait until batch number ``batch`` (and every one before it) has committed."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.flushes >= batch)

    async def _write(self) -> None:
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: bool(self.pending or self.checkpoints or self.updates))
                batch, self.pending = self.pending, []
                checkpoints, self.checkpoints = self.checkpoints, {}
                updates, self.updates = self.updates, {}
                self.taken += 1
                self.changed.notify_all()  # room again for runs waiting on the limit
            while True:
                try:
                    await asyncio.to_thread(self.store.append_events, batch, checkpoints, updates)
                    break
                except Exception:
                    counts = len(batch), len(checkpoints), len(updates)
                    log.exception("writing %d job events (%d checkpoints, %d records) failed; again", *counts)
                    await asyncio.sleep(RETRY_S)
            last: dict[str, int] = {}
            for job_id, seq, _ in batch:
                last[job_id] = seq
            await self.committed(last)
            async with self.changed:
                self.flushes += 1
                self.changed.notify_all()
