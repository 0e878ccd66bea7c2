"""The demo pool: a few harmless ops a fresh install can call (a call, a session, a stream, a job).

Every op is bounded: no file paths, nothing imported by name, nothing that
crashes, hangs or holds memory. (The test kit, with crash/hang/hog ops,
lives in ``tests/kit`` and is never in the default pools.yaml.)
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Generator
from typing import Annotated, Any

from pydantic import Field

from orchestrator import Context, Worker, op

Count = Annotated[int, Field(ge=0, le=10_000)]
Interval = Annotated[float, Field(ge=0, le=5)]


class Demo(Worker):
    """Greetings, arithmetic, a session counter, a ticking stream and a resumable job."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    @op
    def greet(self, name: Annotated[str, Field(max_length=200)]) -> str:
        """``"<greeting>, <name>"`` (the greeting is the pool's option)."""
        return f"{self.greeting}, {name}"

    @op(idempotent=True)
    def add(self, a: int, b: int = 0) -> int:
        """Typed arguments: validated and coerced before the op runs."""
        return a + b

    @op(idempotent=True)
    def where(self) -> dict[str, Any]:
        """Where this actor runs: Ray node id, host, pid, Python, and the file its code was loaded from
        (under Ray's runtime_resources when the code was shipped to the node through the runtime env)."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "python": sys.executable,
            "code": __file__,
        }

    @op(session=True)
    def incr(self, ctx: Context, by: int = 1) -> int:
        """Add to this session's counter; returns the new value."""
        ctx.state["count"] = ctx.state.get("count", 0) + by
        return int(ctx.state["count"])

    @op
    def ticker(self, ctx: Context, n: Count, interval: Interval = 0.0) -> Generator[dict[str, int], None, int]:
        """Yield ``{"i": i}`` n times, ``interval`` seconds apart; return n (stops early when cancelled)."""
        for i in range(n):
            if ctx.cancelled:
                return i
            time.sleep(interval)
            yield {"i": i}
        return n

    @op
    def trials(
        self, ctx: Context, n: Count, interval: Interval = 0.0
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """A resumable job: one event and a checkpoint per trial; a re-run continues where the checkpoint was."""
        start = ctx.resume["next"] if ctx.resume else 0
        for t in range(start, n):
            if ctx.cancelled:
                return {"stopped_at": t}
            time.sleep(interval)
            ctx.progress(done=t + 1, total=n)
            yield {"trial": t}
            ctx.checkpoint({"next": t + 1})
        return {"trials": n, "started_from": start}
