"""A blocking library call (``dspy.GEPA.compile``, ``trl``'s ``train``) run as a job: it runs in a thread, and
its callbacks hand events and checkpoint points to the job's generator one at a time.

The library's thread waits until the generator has yielded (or checkpointed)
what it handed over (``hand``), or only queues an event (``post``, for frequent
ones such as a trainer's log lines); the queue keeps the library's order, so a
checkpoint's position covers exactly the events before it. If the generator
goes away (the job was cancelled or its actor is stopping), ``closed`` is set:
hand-offs stop waiting and the library is told to stop at its next check.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator import Context


class Handoff:
    """Runs ``work`` in a thread; ``items()`` yields what its callbacks hand over, then its outcome."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue: queue.Queue[tuple[str, Any, threading.Event | None]] = queue.Queue()
        self.closed = False
        self.thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """The library should stop: the job was cancelled or its generator went away."""
        return self.closed or self.ctx.cancelled

    def hand(self, kind: str, payload: Any) -> None:
        """Called in the library's thread: give ``payload`` to the generator and wait until it is handled."""
        done = threading.Event()
        self.queue.put((kind, payload, done))
        while not done.wait(0.5) and not self.closed:
            pass

    def post(self, kind: str, payload: Any) -> None:
        """Called in the library's thread: queue ``payload`` without waiting (events only: a checkpoint
        handed later still waits, so it covers every event posted before it)."""
        self.queue.put((kind, payload, None))

    def items(self, work: Callable[[], Any], name: str) -> Iterator[tuple[str, Any]]:
        """Start ``work`` and yield ``(kind, payload)`` as handed over; ``("done", result)`` ends it, and an
        exception in ``work`` is raised here. Each item is released when the consumer asks for the next."""
        self.thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self.thread.start()
        try:
            while True:
                kind, payload, done = self.queue.get()
                try:
                    if kind == "error":
                        raise payload
                    yield kind, payload
                    if kind == "done":
                        return
                finally:
                    if done is not None:
                        done.set()
        finally:
            self.closed = True
            self.thread.join(timeout=5)

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.queue.put(("done", work(), None))
        except BaseException as exc:  # re-raised in the job's generator
            self.queue.put(("error", exc, None))
