"""A worker whose ``put``/``drop`` ops are pool-wide and remembered: what each actor holds shows whether a
pool-wide call reached it, and whether an actor that started later got the remembered calls replayed."""

from __future__ import annotations

import os
from typing import Any

from orchestrator import Worker, op
from orchestrator.errors import InvalidArguments


class Registry(Worker):
    """Holds named items; ``put`` refuses a value of ``"bad"`` (a pool-wide call every actor refuses)."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.puts = 0

    @op(remember="item:{name}")
    def put(self, name: str, value: Any) -> dict[str, Any]:
        """Hold ``value`` under ``name`` (on every actor, and on later ones)."""
        if value == "bad":
            raise InvalidArguments("value: bad", detail=[{"field": "value", "message": "bad"}])
        self.items[name] = value
        self.puts += 1
        return dict(self.items)

    @op(forget="item:{name}")
    def drop(self, name: str) -> dict[str, Any]:
        """Stop holding ``name`` (everywhere)."""
        self.items.pop(name, None)
        return dict(self.items)

    @op(pool_wide=True)
    def touch(self) -> int:
        """Pool-wide, not remembered: returns this process id."""
        return os.getpid()

    @op
    def held(self) -> dict[str, Any]:
        """What this actor holds, and its process id (a plain call: one actor)."""
        return {"pid": os.getpid(), "items": dict(self.items), "puts": self.puts}
