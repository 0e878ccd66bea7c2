"""Log lines from pool actors say whose they are: pool, actor, op and the call, session or job id.

``install`` (once per actor process) puts a handler on the root logger whose
lines read ``... INFO [pool=light actor=light-0 op=chat call=3f2a...] name: message``;
``calling`` marks the op a thread (or an async op's task) runs now, so a
worker's own ``logging`` calls carry it without passing anything. Ray writes
the lines to the actor's log file, where the dashboard's log view and grep
find them by any of these fields.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
FORMAT = "%(asctime)s %(levelname)s [%(whose)s] %(name)s: %(message)s"
_call: contextvars.ContextVar[str] = contextvars.ContextVar("orchestrator_call", default="")


class _Whose(logging.Filter):
    """Adds ``whose`` (``pool=... actor=...`` plus the running call's fields) to every record."""

    def __init__(self, pool: str, actor: str) -> None:
        super().__init__()
        self.prefix = f"pool={pool} actor={actor}"

    def filter(self, record: logging.LogRecord) -> bool:
        call = _call.get()
        record.whose = f"{self.prefix} {call}" if call else self.prefix
        return True


def install(pool: str, actor: str, level: int = logging.INFO) -> None:
    """Route this process's log records through a handler that names the pool, actor and call."""
    root = logging.getLogger()
    for handler in root.handlers:
        if any(isinstance(f, _Whose) for f in handler.filters):
            root.removeHandler(handler)  # one per process, even if a host is built twice
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_Whose(pool, actor))
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)


@contextmanager
def calling(op: str, call_id: str, session: str | None, job: str | None) -> Iterator[None]:
    """Within: log records name this op and its ids."""
    fields = [f"op={op}", f"call={call_id}" if call_id else "", f"session={session}" if session else ""]
    fields.append(f"job={job}" if job else "")
    previous = _call.get()
    _call.set(" ".join(f for f in fields if f))
    try:
        yield
    finally:  # set, not reset(token): a generator op may be resumed from another context
        _call.set(previous)


@contextmanager
def naming(**fields: Any) -> Iterator[None]:
    """Within: log records also carry these fields (``program=rag version=2``) after the call's own."""
    previous = _call.get()
    _call.set(" ".join([previous, *(f"{key}={value}" for key, value in fields.items())]).strip())
    try:
        yield
    finally:
        _call.set(previous)


def carried(awaitable: Awaitable[T]) -> Any:
    """``awaitable`` wrapped so it runs in the caller's context (an async op's task would start without it)."""
    fields = _call.get()

    async def run() -> T:
        _call.set(fields)
        return await awaitable

    return run()
