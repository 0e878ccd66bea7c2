"""Jobs and the micro-batcher: concurrent requests that arrive close together share one ``generate``.

A ``Job`` is one request (one or more rows: prompts x ``n``) plus the queue its
op thread reads events from. The ``Batcher`` owns one thread that takes the
waiting jobs (up to ``max_rows`` rows, all for the same adapter) and hands them
to the backend's ``run`` as one batch. It waits ``window_s`` for company only
when requests have recently overlapped, so a lone sequential client pays no
batching delay.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from workers.light.params import Row

RECENT_S = 1.0  # overlap seen this recently: wait for the window before starting a batch


class Job:
    """One request in flight: its rows, adapter, cancel check, and the events for its op thread."""

    def __init__(self, rows: list[Row], adapter: str | None = None, cancelled: Callable[[], bool] = bool) -> None:
        self.rows = rows
        self.adapter = adapter
        self.cancelled = cancelled
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.batch_size = 0  # rows in the generate call that served this job

    def delta(self, index: int, text: str) -> None:
        """New text for row ``index``."""
        if text:
            self.events.put(("delta", index, text))

    def finish(self, index: int, reason: str, completion_tokens: int) -> None:
        """Row ``index`` ended (``stop`` or ``length``) after ``completion_tokens`` tokens."""
        self.events.put(("finish", index, reason, completion_tokens))

    def fail(self, exc: BaseException) -> None:
        """The whole job failed."""
        self.events.put(("error", exc))

    def stream(self, timeout_s: float | None = None) -> Iterator[tuple[Any, ...]]:
        """Events until every row finished: ``("delta", i, text)`` and ``("finish", i, reason, tokens)``.

        A backend failure is raised here, in the op's thread.
        """
        open_rows = len(self.rows)
        while open_rows:
            event = self.events.get(timeout=timeout_s)
            if event[0] == "error":
                raise event[1]
            if event[0] == "finish":
                open_rows -= 1
            yield event


class Batcher:
    """One generation thread fed by many op threads; see the module docstring."""

    def __init__(
        self, run: Callable[[list[Job]], None], max_rows: int = 8, window_s: float = 0.005, name: str = "batcher"
    ) -> None:
        self.run = run
        self.max_rows = max(1, max_rows)
        self.window_s = window_s
        self.cond = threading.Condition()
        self.pending: deque[Job] = deque()
        self.busy = False
        self.last_overlap = -1e9
        self.closed = False
        self.sizes: deque[int] = deque(maxlen=1000)  # rows per generate call, most recent last
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        """Queue a job; its events arrive on ``job.stream()``."""
        with self.cond:
            if self.closed:
                raise RuntimeError("the batcher is closed")
            if self.busy or self.pending:
                self.last_overlap = time.monotonic()
            self.pending.append(job)
            self.cond.notify_all()
        return job

    def close(self) -> None:
        """Stop the thread after the current batch; waiting jobs fail."""
        with self.cond:
            self.closed = True
            for job in self.pending:
                job.fail(RuntimeError("the model is shutting down"))
            self.pending.clear()
            self.cond.notify_all()

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if self.closed:
                return None
            if time.monotonic() - self.last_overlap < RECENT_S:
                deadline = time.monotonic() + self.window_s
                while self._rows(self.pending) < self.max_rows and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
            batch: list[Job] = []
            rows = 0
            adapter = self.pending[0].adapter
            for job in list(self.pending):
                if job.adapter != adapter or (batch and rows + len(job.rows) > self.max_rows):
                    continue
                batch.append(job)
                rows += len(job.rows)
                self.pending.remove(job)
            self.busy = True
            return batch

    @staticmethod
    def _rows(jobs: deque[Job]) -> int:
        return sum(len(job.rows) for job in jobs)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            size = sum(len(job.rows) for job in batch)
            self.sizes.append(size)
            for job in batch:
                job.batch_size = size
            try:
                self.run(batch)
            except BaseException as exc:  # the thread must survive a bad batch; its jobs get the error
                for job in batch:
                    job.fail(exc)
            finally:
                with self.cond:
                    self.busy = False
