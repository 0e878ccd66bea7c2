"""The Python SDK for the HTTP gateway (httpx and pydantic only: no Ray).

    with Client.from_env() as client:  # $ORCHESTRATOR_URL, $ORCHESTRATOR_TOKEN
        client.call("demo", "greet", name="ada")
        with client.stream("demo", "ticker", n=3) as stream:
            events = list(stream)
        stream.result  # the op's return value
        with client.session("demo") as s:
            s.call("incr", by=2)
        client.embed(["a text", "another"])  # the retrieval pool's vectors
        with client.retrieval() as index:  # a session holding a vector index
            index.add(["cats purr", "dogs bark"])
            index.search("kitten", k=1)
        job = client.submit("demo", "trials", n=10)  # a long-running job
        for seq, event in job.events(): ...
        job.result(timeout=60)

``AsyncClient`` has the same methods, each awaited, returning the async twin
of the same handle: ``async with await client.stream(...) as stream: async for
event in stream``, ``async with await client.session(pool) as s``, ``aclose()``.
Errors are the classes of ``orchestrator.errors``, rebuilt from the gateway's
``{"error": ...}`` body.

Modules: ``core`` (the rules and every client operation, as I/O-free steps),
``handles`` (sessions, retrieval sessions, jobs), ``events`` (SSE streams and
job event logs), ``steps`` (the step machinery), ``sync`` and ``aio`` (the I/O).
"""

from orchestrator import errors
from orchestrator.client.aio import AsyncClient, AsyncJob, AsyncRetrievalSession, AsyncSession, AsyncStream
from orchestrator.client.sync import Client, Job, RetrievalSession, Session, Stream
from orchestrator.errors import *  # noqa: F403  (the error classes, re-exported)

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncRetrievalSession",
    "AsyncSession",
    "AsyncStream",
    "Client",
    "Job",
    "RetrievalSession",
    "Session",
    "Stream",
]
__all__ += errors.__all__
