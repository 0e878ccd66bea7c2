"""``PoolRetriever``: a named corpus of the retrieval pool as a DSPy retriever, one Ray hop per query.

    class RAG(dspy.Module):
        def __init__(self):
            self.retrieve = PoolRetriever("docs", k=3)  # no handle needed yet: it is looked up at each call
            self.respond = dspy.ChainOfThought("context, question -> answer")

        def forward(self, question):
            return self.respond(context=self.retrieve(question).passages, question=question)

It is called as ``dspy.retrievers.Embeddings`` is: ``retriever(query)`` returns a
``dspy.Prediction`` with ``passages`` (the hits' texts, best first) and
``indices`` (their ids: a named corpus has ids where Embeddings has positions),
and ``scores``. The corpus is the pool's (``corpus_build``), embedded once and
served by every retrieval actor, so a program's many evaluation threads, on
any node, share it. Without a handle it uses this process's own
(``handles.current()``: ``ctx.orchestrator`` inside a pool actor, the
``start()``/``connect()`` handle in a driver). Deep copies (DSPy copies
programs all the time) share the handle; a pickled one finds its process's
handle again. It holds no parameters, so a program's ``dump_state`` skips it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.dspy.lm import resolve, share_handle
from orchestrator.errors import InvalidArguments

if TYPE_CHECKING:
    from orchestrator.dataplane.handles import Orchestrator

dspy: Any = importlib.import_module("dspy")
with_callbacks: Any = importlib.import_module("dspy.utils.callback").with_callbacks


class PoolRetriever:
    """The ``k`` best passages of a pool's named corpus for a query, as ``dspy.retrievers.Embeddings`` finds them."""

    def __init__(
        self,
        corpus: str,
        k: int = 3,
        pool: str = "retrieval",
        orchestrator: Orchestrator | Callable[[], Orchestrator] | None = None,
    ) -> None:
        if not isinstance(corpus, str) or not corpus:
            raise InvalidArguments("corpus: name the corpus to search", detail=[{"field": "corpus"}])
        if not isinstance(k, int) or k < 1:
            raise InvalidArguments(f"k: must be a positive number of passages, got {k!r}", detail=[{"field": "k"}])
        self.corpus, self.k, self.pool = corpus, k, pool
        self._handle = orchestrator

    @property
    def orchestrator(self) -> Orchestrator:
        """The handle searches go through (this process's own, looked up at each call, when none was given)."""
        return resolve(self._handle)

    @with_callbacks  # DSPy's callbacks see each search as a module call (streamify's status, tracing)
    def __call__(self, query: str, k: int | None = None) -> Any:
        return self.forward(query, k)

    def forward(self, query: str, k: int | None = None) -> Any:
        """The best ``k`` (default: the retriever's) passages: ``Prediction(passages, indices, scores)``."""
        hits = self.orchestrator.call(self.pool, "search", corpus=self.corpus, query=query, k=k or self.k)
        return _prediction(hits)

    async def acall(self, query: str, k: int | None = None) -> Any:
        """``forward`` for asyncio code (``dspy.Module.acall``)."""
        hits = await self.orchestrator.acall(self.pool, "search", corpus=self.corpus, query=query, k=k or self.k)
        return _prediction(hits)

    def __deepcopy__(self, memo: dict[int, Any]) -> PoolRetriever:
        return share_handle(self, memo)

    def __copy__(self) -> PoolRetriever:
        return PoolRetriever(self.corpus, self.k, self.pool, self._handle)

    def __getstate__(self) -> dict[str, Any]:
        return {**vars(self), "_handle": None}  # a handle holds threads and Ray actors: found again where it lands

    def __repr__(self) -> str:
        return f"PoolRetriever(corpus={self.corpus!r}, k={self.k}, pool={self.pool!r})"


def _prediction(hits: dict[str, Any]) -> Any:
    return dspy.Prediction(passages=list(hits["docs"]), indices=list(hits["ids"]), scores=list(hits["scores"]))
