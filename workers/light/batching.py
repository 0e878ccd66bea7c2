"""Jobs and the micro-batcher: concurrent requests that arrive close together share one ``generate``.

A ``Job`` is one request (one or more rows: prompts x ``n``) plus the queue its
op thread reads events from. The ``Batcher`` owns one thread that takes the
waiting jobs (up to ``max_rows`` rows, all for the same adapter) and hands them
to the backend's ``run`` as one batch. It waits ``window_s`` for company only
when requests have recently overlapped, so a lone sequential client pays no
batching delay. And it waits up to ``RETURN_WINDOWS`` windows for as many jobs
as the last batch served: clients that each send their next request when an
answer comes (a row that hit EOS early comes back first) then share one full
batch, rather than a small one now and the rest after it (``generate`` takes
no rows once it has started).
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
RETURN_WINDOWS = 4  # wait up to this many windows for as many jobs as the last batch served


class Job:
    """One request in flight: its rows, adapter, cancel check, and the events for its op thread.

    A streaming job queues each piece of text as it is made. A non-streaming one
    (``streaming=False``) keeps each row's text and sends it with the row's
    finish event, so its op thread wakes once per row rather than once per token.
    """

    def __init__(
        self,
        rows: list[Row],
        adapter: str | None = None,
        cancelled: Callable[[], bool] = bool,
        streaming: bool = True,
    ) -> None:
        self.rows = rows
        self.adapter = adapter
        self.cancelled = cancelled
        self.streaming = streaming
        self.texts: list[list[str]] = [[] for _ in rows]  # a non-streaming job's text so far, per row
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.batch_size = 0  # rows in the generate call that served this job

    def delta(self, index: int, text: str) -> None:
        """New text for row ``index``."""
        if not text:
            return
        if self.streaming:
            self.events.put(("delta", index, text))
        else:
            self.texts[index].append(text)

    def finish(self, index: int, reason: str, completion_tokens: int) -> None:
        """Row ``index`` ended (``stop``, ``length`` or ``cancelled``) after ``completion_tokens`` tokens."""
        self.events.put(("finish", index, reason, completion_tokens, "".join(self.texts[index])))

    def fail(self, exc: BaseException) -> None:
        """The whole job failed."""
        self.events.put(("error", exc))

    def stream(self, timeout_s: float | None = None) -> Iterator[tuple[Any, ...]]:
        """Events until every row finished: ``("delta", i, text)`` and ``("finish", i, reason, tokens, text)``.

        A finish event's ``text`` is the row's whole text for a non-streaming job, empty
        for a streaming one (its deltas carried it). A backend failure is raised here,
        in the op's thread.
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
        self.return_s = RETURN_WINDOWS * window_s
        self.expected = 1  # jobs the last batch served: their clients are likely to come back together
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
            start = time.monotonic()
            recent = start - self.last_overlap < RECENT_S
            while self._rows(self.pending) < self.max_rows:
                # The last batch's clients are expected back (each sends its next request when its answer
                # comes): one full batch rather than a small one now and the rest after it.
                limit = self.return_s if len(self.pending) < self.expected else self.window_s if recent else 0.0
                left = start + limit - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.closed:
                return None
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
            self.expected = len(batch)
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
