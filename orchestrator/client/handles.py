"""What a client hands back for longer work, each operation written once as steps: sessions and jobs.

``SessionHandle`` (``call``, ``stream`` and the closing steps), ``RetrievalHandle``
(a retrieval session's index: ``add``, ``search``, ``delete``, ``size``, ``save``,
``load``) and ``JobHandle`` (``status``, ``result``, ``cancel``, ``events``).
``sync`` and ``aio`` make the concrete classes: they name their client (which
picks blocking or asyncio I/O) and how the handle closes (``with`` or ``async with``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from orchestrator.client.core import BaseClient, response_field, retrieval_args
from orchestrator.client.events import job_events
from orchestrator.client.steps import Feed, Handle, Steps, event_feed, operation

StreamT = TypeVar("StreamT")


class SessionHandle(Handle, Generic[StreamT]):
    """An open session pinned to one actor (its calls run in order): ``id``, ``pool``, ``slot``, ``ttl_s``."""

    client: BaseClient[StreamT, Any, Any, Any]

    def __init__(self, client: BaseClient[StreamT, Any, Any, Any], record: dict[str, Any]) -> None:
        self.client = client
        self.record = record
        self.id: str = record["id"]
        self.pool: str = record["pool"]
        self.slot: int | None = record.get("slot")
        self.ttl_s: float | None = record.get("ttl_s")
        self.closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, pool={self.pool!r})"

    def _call(self, op: str, **args: Any) -> Steps[Any]:
        return (yield from self.client._call(self.pool, op, args, self.id))

    @operation
    def call(self, op: str, /, **args: Any) -> Steps[Any]:
        """Run ``op`` with this session's state."""
        return (yield from self._call(op, **args))

    @operation
    def stream(self, op: str, /, **args: Any) -> Steps[StreamT]:
        """Stream a streaming op's events with this session's state."""
        return (yield from self.client._stream(self.pool, op, args, self.id))

    def _closing(self) -> Steps[None]:
        """Close the session (idempotent; an expired session counts as closed)."""
        if not self.closed:
            self.closed = True
            yield from self.client._close_session(self.id)


class RetrievalHandle(SessionHandle[StreamT]):
    """A retrieval-pool session: its vector index, through ``add``/``search``/``delete``/``size``/``save``/``load``."""

    @operation
    def add(
        self,
        docs: list[str] | None = None,
        ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
        vectors: list[list[float]] | None = None,
    ) -> Steps[dict[str, Any]]:
        """Add documents (or precomputed vectors); returns ``{"ids", "size"}``."""
        return dict(
            (yield from self._call("add", **retrieval_args(docs=docs, ids=ids, metadata=metadata, vectors=vectors)))
        )

    @operation
    def search(
        self,
        query: str | None = None,
        *,
        queries: list[str] | None = None,
        vectors: list[list[float]] | None = None,
        k: int = 10,
        filter: dict[str, Any] | None = None,
    ) -> Steps[dict[str, Any]]:
        """Hits for ``query`` (``ids``, ``scores``, ``docs``, ``metadata``), or ``results`` for several."""
        args = retrieval_args(query=query, queries=queries, vectors=vectors, k=k, filter=filter)
        return dict((yield from self._call("search", **args)))

    @operation
    def delete(self, ids: list[str]) -> Steps[dict[str, int]]:
        """Remove documents by id (unknown ids: InvalidArguments, nothing removed)."""
        return dict((yield from self._call("delete", ids=ids)))

    @operation
    def size(self) -> Steps[int]:
        """Documents in the index."""
        return int((yield from self._call("size")))

    @operation
    def save(self, path: str) -> Steps[dict[str, Any]]:
        """Save the index under the pool's ``data_dir``."""
        return dict((yield from self._call("save", path=path)))

    @operation
    def load(self, path: str) -> Steps[dict[str, Any]]:
        """Replace the index with one saved under the pool's ``data_dir``."""
        return dict((yield from self._call("load", path=path)))


class JobHandle(Handle):
    """A long-running job: ``status()``, ``events()`` (reconnects by itself), ``result(timeout)``, ``cancel()``."""

    client: BaseClient[Any, Any, Any, Any]

    def __init__(self, client: BaseClient[Any, Any, Any, Any], record: dict[str, Any]) -> None:
        self.client = client
        self.id: str = record["id"]
        self.record = record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    @operation
    def status(self) -> Steps[dict[str, Any]]:
        """The job's record (status, attempts, events logged, result or error)."""
        self.record = dict((yield from self.client._get("v1", "jobs", self.id)))
        return self.record

    @operation
    def result(self, timeout: float | None = None) -> Steps[Any]:
        """Wait for the job: its result, or its error raised (``timeout`` if not done in time)."""
        return (yield from self.client._job_result(self.id, timeout))

    @operation
    def cancel(self) -> Steps[dict[str, Any]]:
        """Cancel (a finished job answers with ``cancelled: false``)."""
        request = self.client.build_request("POST", "v1", "jobs", self.id, "cancel")
        return dict(response_field((yield from self.client._exchange(request, idempotent=True))))

    @event_feed
    def events(self, after: int = 0, follow: bool = True) -> Feed[tuple[int, Any]]:
        """``(seq, event)`` from the log; after a dropped connection it reconnects from the last seq."""
        yield from job_events(self.client, self.id, after, follow)
