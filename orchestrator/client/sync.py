"""The blocking half of the SDK: ``Client`` and its handles, doing the I/O of steps the core writes.

Only I/O lives here: sending a request, reading a line, closing a response,
sleeping. Every operation, its rules and its docstring are in ``core``,
``handles`` and ``events``; ``aio`` is the same half for asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol, Self, TypeVar

import httpx

from orchestrator.client.core import BaseClient, is_event_stream
from orchestrator.client.events import EventStream
from orchestrator.client.handles import JobHandle, RetrievalHandle, SessionHandle
from orchestrator.client.steps import Close, Drive, Emit, IOStep, Lines, Steps, operation

T = TypeVar("T")


class Closable(Protocol):
    def close(self) -> None: ...


class ClosesOnExit:
    """``with`` support: leaving the block calls ``close()``."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self: Closable, *exc: object) -> None:
        self.close()


class Stream(ClosesOnExit, EventStream):
    """An iterator of a streaming op's events, then ``.result``; ``close()`` (or leaving ``with``) stops early."""

    client: Client
    _events: Iterator[Any]
    close = operation(EventStream._closing)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Any:
        return next(self._events)


class Session(ClosesOnExit, SessionHandle[Stream]):
    """A session pinned to one actor; its calls run in order. Close it, or use ``with``."""

    client: Client
    close = operation(SessionHandle._closing)


class RetrievalSession(RetrievalHandle[Stream], Session):
    """A session holding a vector index on the retrieval pool. Close it, or use ``with``."""

    client: Client


class Job(JobHandle):
    """A job over HTTP: ``status()``, ``events()`` (reconnects by itself), ``result(timeout)``, ``cancel()``."""

    client: Client


class Client(ClosesOnExit, BaseClient[Stream, Session, RetrievalSession, Job]):
    """A synchronous client of the gateway (``transport``: an ``httpx.BaseTransport``); close it, or use ``with``."""

    http: httpx.Client
    http_class = httpx.Client

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _run(self, steps: Steps[T]) -> T:
        """Run steps to their value."""
        drive = Drive(steps)
        for _ in self._iterate(drive):  # an operation emits nothing
            pass
        return drive.value

    def _iterate(self, drive: Drive[Any]) -> Iterator[Any]:
        """Do each step's I/O, yielding what the steps emit; a run that fails or is left closes what it held open."""
        try:
            while (step := drive.next_step()) is not None:
                if isinstance(step, Emit):
                    yield step.value
                else:
                    self._io(step, drive)
        finally:
            for response in drive.to_close():
                response.close()

    def _io(self, step: IOStep, drive: Drive[Any]) -> None:
        """One step's I/O; its answer, or the httpx.RequestError it met, goes back to ``drive``."""
        try:
            if isinstance(step, httpx.Request):
                drive.answer = self._send(step)
            elif isinstance(step, Lines):
                drive.answer = next(step.iterator or step.start(step.response.iter_lines()), None)
            elif isinstance(step, Close):
                step.response.close()
            else:
                time.sleep(step)
        except httpx.RequestError as exc:
            drive.error = exc

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send; a 2xx event stream stays open for its lines, any other answer is read (and closed) at once."""
        response = self.http.send(request, stream=True)
        if not is_event_stream(response):
            try:
                response.read()
            except BaseException:
                response.close()  # never leave a half-read response open
                raise
        return response
