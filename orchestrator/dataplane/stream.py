"""``Stream``: the events of one streaming call, read straight from the actor (sync or async iteration).

The actor sends the events its op yielded since the last send as one ``Batch``
(many per object when the op is fast, one when it is slow); the reader hands
them out one by one. Backpressure: the actor queues about a third of
``limits.stream_buffer`` events and sends batches of at most as many, and Ray's
streaming generator holds at most ``STREAM_OBJECTS`` unread batches, so an op
runs about ``stream_buffer`` events ahead of a slow reader, while a reader that
keeps up is never held back. Closing a stream early cancels the op.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, NoReturn, Protocol

import ray
from ray.exceptions import RayActorError

from orchestrator.dataplane.router import LOCAL, WAIT_FOR_ACTOR_S, Router, unwrap
from orchestrator.errors import PoolUnavailable, WorkerCrashed
from orchestrator.types import RECYCLING, Batch, Failure, Final

STREAM_OBJECTS = 2  # unread batches Ray holds per stream (each a third of limits.stream_buffer at most)


class SessionLike(Protocol):
    """What a stream needs of a session handle: its id, slot, and the lock and counter that order its calls."""

    id: str
    slot: int
    lock: Any
    seqs: Any


class Stream:
    """Events of one streaming call. Iterate it; then ``result`` is the op's return value.

    An error in the op is raised (as OrchestratorError) after the events it
    yielded. Closing early (or leaving a ``with`` block, or dropping the
    stream) cancels the op.
    """

    def __init__(self, router: Router, pool: str, op: str, args: dict[str, Any], session: SessionLike | None = None):
        self.router, self.pool, self.op, self.args, self.session = router, pool, op, args, session
        self.result: Any = None
        self.done = False
        self.events = 0
        self.actor: dict[str, Any] | None = None
        self.local = False
        self.exclude: set[str] = set()  # actors that answered "draining" before any event
        self.call_id = router.new_call_id()
        router.check_op(pool, op)
        self.items: Any = None  # opened on first read: the op starts when someone listens
        self.batch: deque[Any] = deque()  # events of the last batch not handed out yet

    def _open(self, exclude: set[str]) -> Any:
        router = self.router
        sid = self.session.id if self.session else None
        version = router.table["version"]
        target = router._target(self.pool, self.session, exclude)
        if target is None:
            router.wait_change(time.monotonic() + WAIT_FOR_ACTOR_S, version)
            target = router._target(self.pool, self.session, exclude)
        if target == LOCAL:
            self.local = True
            return iter(router.local_host.stream((self.op, self.args, sid, None, "", self.call_id), True))
        if target is None:
            raise PoolUnavailable(f"no ready actor in pool {self.pool!r}", pool=self.pool, op=self.op)
        assert isinstance(target, dict)
        self.actor = target
        router.acquire(self.pool, target)
        method = target["handle"].stream.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_OBJECTS
        )
        if self.session is None:
            return method.remote((self.op, self.args, None, None, router.caller, self.call_id))
        with self.session.lock:
            seq = next(self.session.seqs)
            return method.remote((self.op, self.args, sid, seq, router.caller, self.call_id))

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while not self.done:
            if self.batch:
                return self._event(self.batch.popleft())
            if self.items is None:
                self.items = self._open(self.exclude)
            try:
                item = next(self.items)
                if not self.local:
                    item = ray.get(item)
            except BaseException as exc:
                self._fail(exc)
            if self._take(item):
                return item
        raise StopIteration

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        """Async iteration (the gateway): awaits each event without blocking the loop."""
        while not self.done:
            if self.batch:
                return self._event(self.batch.popleft())
            if self.items is None:
                self.items = await asyncio.to_thread(self._open, self.exclude)
            try:
                item = next(self.items) if self.local else await (await self.items.__anext__())
            except StopAsyncIteration:
                self._fail(StopIteration())
            except BaseException as exc:
                self._fail(exc)
            if self._take(item):
                return item
        raise StopAsyncIteration

    def _fail(self, exc: BaseException) -> NoReturn:
        """The transport ended or broke before the op's Final/Failure."""
        if isinstance(exc, RayActorError) and self.actor is not None:
            self.router.report_dead(self.pool, self.actor, self.session.slot if self.session else None)
        if isinstance(exc, StopIteration):
            self._finish()
            raise WorkerCrashed("the stream ended without a result", pool=self.pool, op=self.op) from None
        if isinstance(exc, RayActorError):
            self._finish()
            raise WorkerCrashed(f"the actor running this stream died: {exc}", pool=self.pool, op=self.op) from None
        self.close()  # interrupted (cancelled task, Ctrl-C): the op must stop too
        raise exc

    def _event(self, item: Any) -> Any:
        self.events += 1
        return item

    def _take(self, item: Any) -> bool:
        """True for an event to hand out; handles Final, Failure, a Batch (its events) and a draining actor."""
        if isinstance(item, Batch):
            self.batch.extend(item)
            return False
        if isinstance(item, Final):
            self._finish()
            self.result = item.value
            return False
        if isinstance(item, Failure):
            if item.code == RECYCLING and self.events == 0 and self.actor is not None:
                self.exclude.add(self.actor["actor_id"])
                self._release()
                self.items = None  # reopened on another actor by the loop
                return False
            self._finish()
            unwrap(item)
        self.events += 1
        return True

    def collect(self) -> tuple[list[Any], Any]:
        """All events and the result."""
        events = list(self)
        return events, self.result

    def close(self) -> None:
        """Stop consuming: the op sees ``ctx.cancelled`` and stops."""
        if not self.done:
            if self.actor is not None:
                self.actor["handle"].cancel.remote(self.call_id)
            self._finish()

    def _release(self) -> None:
        if self.actor is not None:
            self.router.release(self.pool, self.actor)
            self.actor = None

    def _finish(self) -> None:
        self.done = True
        self._release()
        self.items = iter(())

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped half-read must not keep its op running or its slot counted.
        with contextlib.suppress(Exception):
            self.close()
