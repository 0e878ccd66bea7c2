"""A worker whose op names a type that exists nowhere: its pool must refuse to start."""

from __future__ import annotations

from orchestrator import Worker, op


class Unresolved(Worker):
    """``lookup``'s argument type cannot be resolved, so its arguments could not be validated."""

    @op
    def lookup(self, key: NoSuchType) -> str:  # type: ignore[name-defined]  # noqa: F821
        """Never runs."""
        return str(key)
