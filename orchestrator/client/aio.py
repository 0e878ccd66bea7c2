"""The asyncio half of the SDK: ``AsyncClient`` and its handles, doing the I/O of steps the core writes.

The same operations as ``Client`` (written once, in ``core``, ``handles`` and
``events``), each awaited: ``await client.call(...)``, ``async with await
client.session(pool) as s``, ``async for event in stream``, ``aclose()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol, Self, TypeVar

import httpx

from orchestrator.client.core import BaseClient, is_event_stream
from orchestrator.client.events import EventStream
from orchestrator.client.handles import JobHandle, RetrievalHandle, SessionHandle
from orchestrator.client.steps import Close, Drive, Emit, IOStep, Lines, Steps, operation

T = TypeVar("T")


class AsyncClosable(Protocol):
    def aclose(self) -> Any: ...


class AsyncClosesOnExit:
    """``async with`` support: leaving the block awaits ``aclose()``."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self: AsyncClosable, *exc: object) -> None:
        await self.aclose()


class AsyncStream(AsyncClosesOnExit, EventStream):
    """An async iterator of a streaming op's events, then ``.result``; ``aclose()`` (or leaving ``async with``)
    stops early."""

    client: AsyncClient
    _events: AsyncIterator[Any]
    aclose = operation(EventStream._closing)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        return await anext(self._events)


class AsyncSession(AsyncClosesOnExit, SessionHandle[AsyncStream]):
    """A session pinned to one actor, for asyncio; ``aclose()`` it, or use ``async with``."""

    client: AsyncClient
    aclose = operation(SessionHandle._closing)


class AsyncRetrievalSession(RetrievalHandle[AsyncStream], AsyncSession):
    """``RetrievalSession`` for asyncio: the same methods, awaited."""

    client: AsyncClient


class AsyncJob(JobHandle):
    """``Job`` for asyncio: the same methods, awaited; ``events()`` is an async iterator."""

    client: AsyncClient


class AsyncClient(AsyncClosesOnExit, BaseClient[AsyncStream, AsyncSession, AsyncRetrievalSession, AsyncJob]):
    """An asyncio client: the methods of ``Client``, awaited (``transport``: an ``httpx.AsyncBaseTransport``);
    ``aclose()`` it, or use ``async with``."""

    http: httpx.AsyncClient
    http_class = httpx.AsyncClient

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _run(self, steps: Steps[T]) -> T:
        """Run steps to their value."""
        drive = Drive(steps)
        async for _ in self._iterate(drive):  # an operation emits nothing
            pass
        return drive.value

    async def _iterate(self, drive: Drive[Any]) -> AsyncIterator[Any]:
        """Do each step's I/O, yielding what the steps emit; a run that fails or is left closes what it held open."""
        try:
            while (step := drive.next_step()) is not None:
                if isinstance(step, Emit):
                    yield step.value
                else:
                    await self._io(step, drive)
        finally:
            for response in drive.to_close():
                await response.aclose()

    async def _io(self, step: IOStep, drive: Drive[Any]) -> None:
        """One step's I/O; its answer, or the httpx.RequestError it met, goes back to ``drive``."""
        try:
            if isinstance(step, httpx.Request):
                drive.answer = await self._send(step)
            elif isinstance(step, Lines):
                drive.answer = await anext(step.iterator or step.start(step.response.aiter_lines()), None)
            elif isinstance(step, Close):
                await step.response.aclose()
            else:
                await asyncio.sleep(step)
        except httpx.RequestError as exc:
            drive.error = exc

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send; a 2xx event stream stays open for its lines, any other answer is read (and closed) at once."""
        response = await self.http.send(request, stream=True)
        if not is_event_stream(response):
            try:
                await response.aread()
            except BaseException:
                await response.aclose()  # never leave a half-read response open
                raise
        return response
