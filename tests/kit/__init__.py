"""Small workers the tests and benchmarks drive: each op exercises one behaviour."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import ray

from orchestrator import Context, Worker, op


class Toolbox(Worker):
    """Echo, sleep, a session counter, crash on demand, memory hog, streaming ticker, fan-out."""

    def __init__(self, greeting: str = "hello", fail_init: bool = False) -> None:
        if fail_init:
            raise RuntimeError("asked to fail in the constructor")
        self.greeting = greeting
        self.hoard: list[bytes] = []

    @op(idempotent=True)
    def echo(self, value: Any = None) -> Any:
        """Return ``value`` unchanged."""
        return value

    @op
    def noop(self) -> None:
        """Do nothing (for latency benchmarks)."""

    @op
    def add(self, a: int, b: int = 0) -> int:
        """Typed arguments: validated and coerced before the op runs."""
        return a + b

    @op
    def greet(self, name: str) -> str:
        """Use the pool's options."""
        return f"{self.greeting}, {name}"

    @op
    def sleep(self, seconds: float, ctx: Context) -> float:
        """Sleep (cooperatively: stops early when cancelled); returns the seconds slept."""
        start = time.monotonic()
        while time.monotonic() - start < seconds and not ctx.cancelled:
            time.sleep(0.01)
        return time.monotonic() - start

    @op
    def busy(self, seconds: float) -> int:
        """Keep the actor busy ``seconds``; returns its pid (which actor served the call)."""
        time.sleep(seconds)
        return os.getpid()

    @op(idempotent=True)
    def slow_echo(self, value: Any, seconds: float) -> Any:
        """Sleep uninterruptibly, then echo (for crash-during-call tests)."""
        time.sleep(seconds)
        return value

    @op
    async def aecho(self, value: Any = None) -> Any:
        """An ``async def`` op."""
        await asyncio.sleep(0)
        return value

    @op
    def whoami(self) -> dict[str, Any]:
        """Process facts: pid, the GPUs Ray gave this actor, and the Ray task name this call runs as."""
        return {
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "task": ray.get_runtime_context().get_task_name(),
        }

    @op
    def package_version(self, package: str) -> str | None:
        """The version of ``package`` this actor imports (None if it is not installed)."""
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
        return str(getattr(module, "__version__", "unknown"))

    @op
    def needs_module(self, module: str) -> None:
        """Import a module the env may not have (ImportError -> dependency_missing)."""
        importlib.import_module(module)

    @op
    def fail(self, message: str = "boom") -> None:
        """Raise ValueError (-> op_failed)."""
        raise ValueError(message)

    @op
    def crash(self) -> None:
        """Kill this actor's process at once (as a segfault or OOM kill would)."""
        os._exit(1)

    @op
    def hog(self, megabytes: int) -> int:
        """Hold ``megabytes`` more memory; returns the total held in MiB."""
        self.hoard.append(os.urandom(1024) * (1024 * megabytes))
        return sum(len(b) for b in self.hoard) >> 20

    @op
    def hang(self) -> None:
        """Stop this whole process (SIGSTOP): it answers nothing, pings included."""
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)

    @op
    def fake_oom(self, batch_size: int = 8) -> int:
        """Raise a CUDA-style OOM until batch_size is 1 (exercises the batch-halving retry)."""
        if batch_size > 1:
            raise _fake_cuda_oom()
        return batch_size

    @op
    def oom(self) -> None:
        """Raise a CUDA-style OOM (an op without batch_size: no retry, -> gpu_oom)."""
        raise _fake_cuda_oom()

    @op(session=True)
    def incr(self, ctx: Context, by: int = 1) -> int:
        """Add to this session's counter; returns the new value."""
        ctx.state["count"] = ctx.state.get("count", 0) + by
        return int(ctx.state["count"])

    @op(session=True)
    def append(self, ctx: Context, item: Any, seconds: float = 0.0) -> list[Any]:
        """Append to this session's list (optionally slowly); returns the list."""
        time.sleep(seconds)
        ctx.state.setdefault("items", []).append(item)
        return list(ctx.state["items"])

    @op(session=True)
    def save(self, ctx: Context) -> None:
        """Checkpoint the session state explicitly."""
        ctx.checkpoint()

    @op
    def ticker(
        self, ctx: Context, n: int, interval: float = 0.0, fail_at: int = -1, mark: str = ""
    ) -> Generator[dict[str, int], None, int]:
        """Yield ``{"i": i}`` n times; return n. ``mark``: a file recording how many were produced."""
        for i in range(n):
            if i == fail_at:
                raise RuntimeError(f"failed at {i}")
            if ctx.cancelled:
                return i
            if interval:
                time.sleep(interval)
            if mark:
                Path(mark).write_text(str(i + 1))
            yield {"i": i}
        return n

    @op
    def log(self, message: str, level: str = "info") -> None:
        """Write ``message`` through Python's logging (the line should name the pool, actor, op and call)."""
        logging.getLogger("tests.kit").log(logging.getLevelNamesMapping()[level.upper()], message)

    @op
    def trials(
        self, ctx: Context, n: int, interval: float = 0.0, checkpoint_every: int = 1, ignore_cancel: bool = False
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """A resumable job: one event per trial, a checkpoint every few trials, progress as it goes.

        It follows the checkpoint contract: a re-run continues from exactly where
        the checkpoint was taken (right after the trial it covers was yielded).
        """
        start = ctx.resume["next"] if ctx.resume else 0
        total = ctx.resume["total"] if ctx.resume else 0
        for t in range(start, n):
            if ctx.cancelled and not ignore_cancel:
                return {"total": total, "started_from": start, "stopped_at": t}
            time.sleep(interval)
            total += t
            ctx.progress(done=t + 1, total=n)
            yield {"trial": t}
            if (t + 1) % checkpoint_every == 0:
                ctx.checkpoint({"next": t + 1, "total": total})
        return {"total": total, "started_from": start}

    @op
    def steps(self, ctx: Context, n: int, interval: float = 0.0) -> Generator[dict[str, int], None, int]:
        """Yield a step, then report progress and checkpoint after it: progress is pending at each checkpoint."""
        for i in range(ctx.resume["next"] if ctx.resume else 0, n):
            yield {"step": i}
            ctx.progress(done=i + 1)
            ctx.checkpoint({"next": i + 1})
            time.sleep(interval)
        return n

    @op
    async def aticker(self, n: int) -> AsyncIterator[dict[str, int]]:
        """An async generator op."""
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    @op
    def fan_out(self, ctx: Context, pool: str, n: int) -> list[Any]:
        """Call ``echo`` on ``pool`` n times (pipelined) and gather the results."""
        return list(ctx.orchestrator.call_many(pool, "echo", [{"value": i} for i in range(n)]))

    @op
    def call_pool(self, ctx: Context, pool: str, op_name: str, args: dict[str, Any]) -> Any:
        """Call another (or this) pool from inside an op."""
        return ctx.orchestrator.call(pool, op_name, **args)


def _fake_cuda_oom() -> Exception:
    # Same name and module root as torch.cuda.OutOfMemoryError, without needing torch.
    cls = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch.cuda"})
    return cls("CUDA out of memory. Tried to allocate 2.00 GiB")


class NotAWorker:
    """Used to prove pool start-up rejects classes that are not Workers."""

    def echo(self) -> None:
        """Not an op."""
