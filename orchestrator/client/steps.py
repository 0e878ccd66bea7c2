"""The step machinery: each operation is written once, as a generator of I/O steps that either client runs.

A step is what the I/O half does next; the generator gets the answer back:

    httpx.Request    send it; answer: the httpx.Response (read at once, unless it is
                     a 2xx event stream, which stays open for its lines), or the
                     httpx.RequestError thrown in
    float            sleep that many seconds; answer: None
    Lines(response)  read the open response's next line; answer: the line, None at
                     its end, or the httpx.RequestError thrown in
    Close(response)  close the open response
    Emit(value)      hand ``value`` to whoever iterates (an event of a stream or a job)

``Client`` runs steps with blocking I/O, ``AsyncClient`` with asyncio; neither
holds a rule. ``operation`` turns a method written as steps into a method of
both: bound to a sync object it returns the value, bound to an async one the
awaitable. ``event_feed`` does the same for steps that emit: an iterator, or an
async iterator. Handles (sessions, jobs, streams) run theirs through ``client``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import httpx

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True)
class Emit(Generic[E]):
    """Step: hand ``value`` to the consumer of the steps (they go on when it asks for the next one)."""

    value: E


@dataclass(frozen=True)
class Close:
    """Step: close this open response (the steps are done with it)."""

    response: httpx.Response


class Lines:
    """Step: read the next line of this open response; yield the same object for each line."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.iterator: Any = None  # the I/O half's line iterator, made on the first read

    def start(self, iterator: T) -> T:
        """Keep the line iterator the I/O half made for this response."""
        self.iterator = iterator
        return iterator


IOStep = httpx.Request | float | Lines | Close  # what the I/O half does
Step = IOStep | Emit[Any]
Steps = Generator[Step, Any, T]  # steps that end with a value: an operation
Feed = Generator[IOStep | Emit[E], Any, None]  # steps that emit values of type E as they go: an event feed


class Drive(Generic[T]):
    """One run of steps: the step they want next, the answer to give them and the responses they hold open."""

    def __init__(self, steps: Steps[T], holding: Iterable[httpx.Response] = ()) -> None:
        self.steps = steps
        self.open = list(holding)  # event streams this run reads (closing one twice is harmless)
        self.answer: Any = None
        self.error: httpx.RequestError | None = None
        self.finished = False
        self._value: T

    def next_step(self) -> Step | None:
        """Give the steps the last answer (or error); their next step, or None once they returned."""
        answer, error = self.answer, self.error
        self.answer, self.error = None, None
        if isinstance(answer, httpx.Response) and not answer.is_closed:
            self.open.append(answer)
        try:
            return self.steps.throw(error) if error is not None else self.steps.send(answer)
        except StopIteration as stop:
            self.finished, self._value = True, stop.value
            return None

    @property
    def value(self) -> T:
        """What the steps returned."""
        if not self.finished:
            raise RuntimeError("the steps have not returned")
        return self._value

    def to_close(self) -> list[httpx.Response]:
        """The responses to close once the run stops: all it held if it failed or was left, none if it returned.

        Steps that return an open response's reader (a stream op returns its stream) hand the response over.
        """
        return [] if self.finished else self.open


class SyncRunner(Protocol):
    """A client that runs steps with blocking I/O."""

    def _run(self, steps: Steps[T], /) -> T: ...

    def _iterate(self, drive: Drive[Any], /) -> Iterator[Any]: ...


class AsyncRunner(Protocol):
    """A client that runs steps with asyncio."""

    def _run(self, steps: Steps[T], /) -> Awaitable[T]: ...

    def _iterate(self, drive: Drive[Any], /) -> AsyncIterator[Any]: ...


class SyncHandle(Protocol):
    """A handle of a sync client."""

    @property
    def client(self) -> SyncRunner: ...


class AsyncHandle(Protocol):
    """A handle of an async client."""

    @property
    def client(self) -> AsyncRunner: ...


class Handle:
    """Something a client returns (a session, a job, a stream): its operations run through that client."""

    client: Any


def runner(obj: object) -> Any:
    """The client that does the I/O of ``obj``'s steps: its own, or its client's."""
    return obj.client if isinstance(obj, Handle) else obj


class StepsMethod(Generic[P, T]):
    """What ``operation`` and ``event_feed`` share: the steps function, and binding it to the object it runs for."""

    def __init__(self, steps: Callable[Concatenate[Any, P], Generator[Step, Any, Any]]) -> None:
        self.steps = steps
        self.__doc__, self.__name__, self.__wrapped__ = steps.__doc__, steps.__name__, steps
        signature = inspect.signature(steps)  # as a caller sees it: no ``self``, and not the steps it returns
        parameters = list(signature.parameters.values())[1:]
        self.__signature__ = signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name  # ``close = operation(SessionHandle._closing)`` is called ``close``

    def _bind(self, obj: Any, start: Callable[[Any, Generator[Step, Any, Any]], Any]) -> Any:
        """``obj``'s method: it makes the steps and has ``start(client, steps)`` run them."""
        if obj is None:
            return self
        steps = self.steps

        @functools.wraps(steps)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return start(runner(obj), steps(obj, *args, **kwargs))

        bound.__name__, bound.__signature__ = self.__name__, self.__signature__  # type: ignore[attr-defined]
        return bound


class operation(StepsMethod[P, T]):  # lower case: used like ``property``
    """A method written once as steps: bound to a sync client (or handle) it returns their value, to an async one
    the awaitable of it (``AsyncClient._run`` is ``async def``)."""

    def __init__(self, steps: Callable[Concatenate[Any, P], Steps[T]]) -> None:
        super().__init__(steps)  # typed here so that T is what the steps return

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: SyncRunner | SyncHandle, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncRunner | AsyncHandle, owner: type | None = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self._bind(obj, lambda client, steps: client._run(steps))


class event_feed(StepsMethod[P, E]):  # lower case: used like ``property``
    """A method written once as steps that emit: bound to a sync client (or handle) it returns an iterator of what
    they emit, to an async one an async iterator."""

    def __init__(self, steps: Callable[Concatenate[Any, P], Feed[E]]) -> None:
        super().__init__(steps)  # typed here so that E is what the steps emit

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: SyncRunner | SyncHandle, owner: type | None = None) -> Callable[P, Iterator[E]]: ...
    @overload
    def __get__(self, obj: AsyncRunner | AsyncHandle, owner: type | None = None) -> Callable[P, AsyncIterator[E]]: ...
    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self._bind(obj, lambda client, steps: client._iterate(Drive(steps)))
