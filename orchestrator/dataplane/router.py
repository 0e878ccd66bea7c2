"""The data plane: route calls from the caller's process straight to actors.

The router keeps the coordinator's routing table (long-polled, versioned)
and picks the ready actor with the fewest calls outstanding from this
process. Each pool has a bound on outstanding calls (actors x concurrency +
queue); past it the call is refused at once with ``overloaded``.

The call logic is written once, as a generator of steps (``("get", ref,
timeout)`` / ``("wait", deadline, version)``); the sync and async entry points only
drive it, each with its own kind of waiting.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Generator
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from orchestrator import metrics
from orchestrator.errors import (
    OpNotFound,
    OrchestratorError,
    Overloaded,
    PoolNotFound,
    PoolUnavailable,
    Timeout,
    WorkerCrashed,
    first_line,
)
from orchestrator.types import COORDINATOR_NAME, RECYCLING, Failure

log = logging.getLogger("orchestrator.router")

WAIT_FOR_ACTOR_S = 60.0  # how long a call waits for a restarting actor before pool_unavailable
POLL_S = 5.0
LOCAL = "local"
MAX_CHUNK = 32  # calls per Ray task in call_many (WorkerHost.call_batch)

Step = tuple[Any, ...]
Steps = Generator[Step, Any, Any]


class Router:
    """Routing table, outstanding-call counts, and the call logic for one process."""

    def __init__(self, coordinator: Any, local_host: Any = None, namespace: str | None = None) -> None:
        self.coordinator = coordinator
        self.namespace = namespace  # where to find the coordinator by name again
        self.local_host = local_host  # set inside a WorkerHost: calls to its own pool run inline
        self.caller = uuid.uuid4().hex[:12]
        self.ids = itertools.count()
        self.turns = itertools.count()  # rotates ties between equally loaded actors
        self.cond = threading.Condition()
        self.table: dict[str, Any] = {"version": -1, "pools": {}}
        self.outstanding: dict[str, int] = defaultdict(int)
        self.pool_outstanding: dict[str, int] = defaultdict(int)
        self.closed = False
        self._install(ray.get(coordinator.routing.remote(-1, 0.0)))
        self.poller = threading.Thread(target=self._poll, name="orchestrator-routing", daemon=True)
        self.poller.start()
        # At interpreter exit, stop polling before Ray shuts down under the poller (which would end the
        # process with an error status).
        atexit.register(_close, weakref.ref(self))

    # ---------------------------------------------------------------- table
    def _install(self, table: dict[str, Any] | None) -> None:
        if table is None:
            return
        with self.cond:
            if table["version"] > self.table["version"]:
                self.table = table
                self.cond.notify_all()

    def _poll(self) -> None:
        # While the coordinator restarts, Ray holds this call and retries it: calls go on from the last
        # table meanwhile. If it is gone for good (a new one was started), find the new one by name.
        while not self.closed:
            try:
                ref = self.coordinator.routing.remote(self.table["version"], POLL_S)
                while not self.closed and not ray.wait([ref], timeout=0.25)[0]:
                    pass
                if not self.closed:
                    self._install(ray.get(ref))
            except Exception:
                if self.closed or not ray.is_initialized():
                    return
                time.sleep(0.5)
                self._resolve()

    def _resolve(self) -> None:
        if self.namespace is None:
            return
        with contextlib.suppress(ValueError):  # not back yet: keep the last table and try again
            self.coordinator = ray.get_actor(COORDINATOR_NAME, namespace=self.namespace)

    def wait_change(self, deadline: float, version: int | None = None) -> None:
        """Block until the table is newer than ``version`` (default: the current one) or ``deadline`` passes.

        A caller that looked at the table and found no actor passes the version it looked at, so a
        table installed in between is not missed (which would hold the call until the deadline)."""
        version = self.table["version"] if version is None else version
        with self.cond:
            self.cond.wait_for(lambda: self.table["version"] != version, timeout=max(0.0, deadline - time.monotonic()))

    def pool(self, name: str) -> dict[str, Any]:
        """A pool's routing entry; raises pool_not_found / pool_unavailable."""
        pools = self.table["pools"]
        entry = pools.get(name)
        if entry is None:
            raise PoolNotFound(f"no pool {name!r} (pools: {', '.join(sorted(pools)) or 'none'})", pool=name)
        if entry["state"] in ("failed", "stopped"):
            raise PoolUnavailable(f"pool {name!r} is {entry['state']}: {entry['reason']}", pool=name)
        return entry

    def check_op(self, pool: str, op: str) -> dict[str, Any]:
        """The op's description; raises op_not_found."""
        ops = self.pool(pool)["ops"]
        if not ops:  # no actor has started yet, so the ops are unknown: the call waits for one
            return {"name": op, "session": False, "stream": False, "idempotent": False, "params": {}}
        if op not in ops:
            raise OpNotFound(f"pool {pool!r} has no op {op!r} (ops: {', '.join(sorted(ops))})", pool=pool, op=op)
        return ops[op]

    def pick(self, pool: str, exclude: set[str]) -> dict[str, Any] | str | None:
        """The ready actor with the fewest outstanding calls, LOCAL, or None when none is ready."""
        entry = self.pool(pool)
        if self.local_host is not None and self.local_host.pool == pool:
            return LOCAL  # never wait on our own pool's slots: run inline
        actors = [a for a in entry["actors"].values() if a["stateless"] and a["actor_id"] not in exclude]
        if not actors:
            return None
        bound = _bound(entry)
        if self.pool_outstanding[pool] >= bound:
            metrics.overloaded().inc(tags={"pool": pool})
            raise Overloaded(
                f"{self.pool_outstanding[pool]} calls outstanding (bound {bound}: actors x concurrency + queue)",
                pool=pool,
            )
        start = next(self.turns) % len(actors)
        rotated = actors[start:] + actors[:start]
        return min(rotated, key=lambda a: self.outstanding[a["actor_id"]])

    def chunk_size(self, pool: str, waiting: int) -> int:
        """How many of ``waiting`` calls ``call_many`` sends in one Ray task: enough to share Ray's cost per
        task, few enough that every actor slot gets work and the bound on outstanding calls holds."""
        entry = self.pool(pool)
        slots = len(entry["actors"]) * entry["limits"]["concurrency"]
        room = _bound(entry) - self.pool_outstanding[pool]
        return max(1, min(MAX_CHUNK, waiting // max(1, 2 * slots), room))

    def session_actor(self, pool: str, slot: int) -> dict[str, Any] | None:
        """The current actor of a session's slot, or None while it restarts."""
        return self.pool(pool)["actors"].get(slot)

    def acquire(self, pool: str, actor: dict[str, Any]) -> None:
        """Count a call as outstanding."""
        with self.cond:
            self.outstanding[actor["actor_id"]] += 1
            self.pool_outstanding[pool] += 1
            self._count_queued(pool)

    def release(self, pool: str, actor: dict[str, Any]) -> None:
        """A call finished."""
        with self.cond:
            self.outstanding[actor["actor_id"]] -= 1
            self.pool_outstanding[pool] -= 1
            self._count_queued(pool)

    def _count_queued(self, pool: str) -> None:
        """The queue-depth gauge: this caller's calls beyond its actors' concurrency."""
        entry = self.table["pools"].get(pool)
        capacity = len(entry["actors"]) * entry["limits"]["concurrency"] if entry else 0
        metrics.queued().set(max(0, self.pool_outstanding[pool] - capacity), tags={"pool": pool})

    def report_dead(self, pool: str, actor: dict[str, Any], slot: int | None = None) -> None:
        """Tell the coordinator at once (it re-checks the actor and restarts it)."""
        index = slot if slot is not None else _slot_of(self.pool(pool), actor)
        if index is not None:
            self.coordinator.report_dead.remote(pool, index, actor["gen"])

    def new_call_id(self) -> str:
        """An id the host can cancel the call by."""
        return f"{self.caller}:{next(self.ids)}"

    # ---------------------------------------------------------------- calls
    def call_steps(
        self,
        pool: str,
        op: str,
        args: dict[str, Any],
        session: Any = None,
        timeout: float | None = None,
    ) -> Steps:
        """The call logic. Yields ``("get", ref, timeout)`` and ``("wait", deadline, version)``; returns the result."""
        info = self.check_op(pool, op)
        limit = timeout if timeout is not None else self.pool(pool)["limits"]["call_timeout_s"]
        wait_deadline = time.monotonic() + (limit if limit is not None else WAIT_FOR_ACTOR_S)
        exclude: set[str] = set()
        retried = False
        while True:
            version = self.table["version"]
            if self.check_op(pool, op).get("pool_wide"):  # every actor (not only a session's), via the coordinator
                return unwrap((yield ("get", self.coordinator.pool_call.remote(pool, op, args), limit)))
            actor = self._target(pool, session, exclude)
            if actor is LOCAL:
                return unwrap(self.local_host.call((op, args, session.id if session else None, None, "", ""), True))
            if actor is None:
                if time.monotonic() >= wait_deadline:
                    raise PoolUnavailable(f"no ready actor in pool {pool!r}", pool=pool, op=op)
                yield ("wait", wait_deadline, version)
                continue
            assert isinstance(actor, dict)
            call_id = self.new_call_id()
            self.acquire(pool, actor)
            try:
                if session is not None:
                    with session.lock:  # the sequence number and the submission go together
                        ref = actor["handle"].call.remote(
                            (op, args, session.id, next(session.seqs), self.caller, call_id)
                        )
                else:
                    ref = actor["handle"].call.remote((op, args, None, None, self.caller, call_id))
                try:
                    value = yield ("get", ref, limit)
                except (GetTimeoutError, TimeoutError):
                    actor["handle"].cancel.remote(call_id)
                    raise Timeout(f"no answer within {limit:g}s (call_timeout_s)", pool=pool, op=op) from None
                except RayActorError as exc:
                    self.report_dead(pool, actor, session.slot if session else None)
                    if info["idempotent"] and not retried and session is None:
                        retried = True
                        exclude.add(actor["actor_id"])
                        continue
                    raise WorkerCrashed(
                        f"the actor running this call died: {first_line(exc)}", pool=pool, op=op
                    ) from None
            finally:
                self.release(pool, actor)
            if isinstance(value, Failure) and value.code == RECYCLING:
                exclude.add(actor["actor_id"])
                if session is not None:
                    yield ("wait", wait_deadline, version)
                continue
            return unwrap(value)

    def _target(self, pool: str, session: Any, exclude: set[str]) -> dict[str, Any] | str | None:
        if session is None:
            return self.pick(pool, exclude)
        if self.local_host is not None and self.local_host.pool == pool:
            return LOCAL
        actor = self.session_actor(pool, session.slot)
        return None if actor is None or actor["actor_id"] in exclude else actor

    def run(self, steps: Steps) -> Any:
        """Drive call steps synchronously."""
        message: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(message)
            except StopIteration as stop:
                return stop.value
            message, error = None, None
            try:
                if step[0] == "get":
                    message = ray.get(step[1], timeout=step[2])
                else:
                    self.wait_change(step[1], step[2])
            except (GetTimeoutError, RayActorError) as exc:
                error = exc

    async def arun(self, steps: Steps) -> Any:
        """Drive call steps on an asyncio loop."""
        import asyncio

        message: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(message)
            except StopIteration as stop:
                return stop.value
            message, error = None, None
            try:
                if step[0] == "get" and step[2] is None:
                    message = await step[1]  # no timeout: no wrapper task on the hot path
                elif step[0] == "get":
                    message = await asyncio.wait_for(_awaitable(step[1]), step[2])
                else:
                    await asyncio.to_thread(self.wait_change, step[1], step[2])
            except (TimeoutError, RayActorError) as exc:
                error = TimeoutError() if isinstance(exc, asyncio.TimeoutError) else exc

    def close(self) -> None:
        """Stop the table poller (and wait for it, unless called from it)."""
        self.closed = True
        if self.poller is not threading.current_thread():
            self.poller.join(timeout=2.0)


def _close(ref: weakref.ref[Router]) -> None:
    router = ref()
    if router is not None:
        router.close()


async def _awaitable(ref: Any) -> Any:
    return await ref


def _bound(entry: dict[str, Any]) -> int:
    """Calls a caller may have outstanding on a pool: actors x concurrency + queue."""
    limits = entry["limits"]
    return int(len(entry["actors"]) * limits["concurrency"] + limits["queue"])


def unwrap(value: Any) -> Any:
    """A host's answer: the result, or its Failure raised as the matching OrchestratorError."""
    if isinstance(value, Failure):
        raise OrchestratorError.from_dict(value.error)
    return value


def _slot_of(entry: dict[str, Any], actor: dict[str, Any]) -> int | None:
    for index, candidate in entry["actors"].items():
        if candidate["actor_id"] == actor["actor_id"]:
            return int(index)
    return None
