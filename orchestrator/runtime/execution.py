"""Running one op inside a pool actor: plain, async and streaming methods, GPU OOM retries, error mapping.

A streaming op becomes an iterator of its events (with the progress events
``ctx.progress`` queued, in order), then ``Final(result)``. Any exception
becomes the OrchestratorError a caller should see: ``dependency_missing``
naming the env file, ``gpu_oom``, or ``op_failed`` with the exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import pickle
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator.contract import Context, OpSpec
from orchestrator.errors import DependencyMissing, GpuOom, OpFailed, OrchestratorError
from orchestrator.runtime.logs import carried
from orchestrator.types import Batch, Checkpoint, Final

LoopGetter = Callable[[], asyncio.AbstractEventLoop]


def run_op(worker: Any, spec: OpSpec, args: dict[str, Any], ctx: Context, loop: LoopGetter) -> Any:
    """Run a non-streaming op; on CUDA OOM an op with ``batch_size`` is retried with half the batch."""
    method = getattr(worker, spec.name)
    while True:
        kwargs = {**args, "ctx": ctx} if spec.takes_ctx else args
        try:
            if spec.is_async:
                return asyncio.run_coroutine_threadsafe(carried(method(**kwargs)), loop()).result()
            return method(**kwargs)
        except BaseException as exc:
            # An op whose batch_size defaults to None uses its worker's own batch_size option.
            batch = args.get("batch_size") or getattr(worker, "batch_size", None)
            if not (is_cuda_oom(exc) and spec.batch_param and isinstance(batch, int) and batch > 1):
                raise
            empty_cuda_cache()
            args = {**args, "batch_size": batch // 2}


def run_stream(worker: Any, spec: OpSpec, args: dict[str, Any], ctx: Context, loop: LoopGetter) -> Iterator[Any]:
    """Run a streaming op: its events (progress included), then ``Final(result)``; stops when cancelled."""
    kwargs = {**args, "ctx": ctx} if spec.takes_ctx else args
    gen = getattr(worker, spec.name)(**kwargs)
    if spec.is_async:
        event_loop = loop()
        try:
            while not ctx.cancelled:
                try:
                    item = asyncio.run_coroutine_threadsafe(carried(gen.__anext__()), event_loop).result()
                except StopAsyncIteration:
                    break
                yield from pending_progress(ctx)
                ctx.yielded += 1
                yield item
            yield from pending_progress(ctx)
        finally:
            asyncio.run_coroutine_threadsafe(gen.aclose(), event_loop).result()
        yield Final(None)
        return
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                yield from pending_progress(ctx)
                yield Final(stop.value)
                return
            if ctx.cancelled:
                return
            yield from pending_progress(ctx)
            ctx.yielded += 1
            yield item
    finally:
        gen.close()


BATCH_MAX = 512  # events in one Batch at most (and queued ahead of the sender at most)
_END = object()


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def batched(items: Iterator[Any], ctx: Context, limit: int = BATCH_MAX, final_in_batch: bool = False) -> Iterator[Any]:
    """A stream with its events grouped: ``items`` runs in its own thread, and each read sends all it
    yielded since the last one as one :class:`~orchestrator.types.Batch` (``Final`` alone, last). An op that
    yields slowly sends batches of one, as before; one that yields fast sends far fewer objects. The queue
    between them holds ``limit`` events (and a batch at most as many), so a slow reader still holds the op
    back. ``ctx._emit`` puts an item in the same queue (a job's checkpoint: see ``job_checkpoint``). With
    ``final_in_batch`` (a job's stream) ``Final`` ends the batch of the events before it: a short job costs
    one object, not two."""
    handed: queue.Queue[Any] = queue.Queue(maxsize=limit)
    stopped = threading.Event()  # the sender went away: nobody reads the queue any more

    def put(item: Any) -> bool:
        while not stopped.is_set():
            with contextlib.suppress(queue.Full):
                handed.put(item, timeout=0.1)
                return True
        return False

    ctx._emit = put

    def pump() -> None:  # runs the op (run_stream) in this thread, so its generator is closed here too
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # raised again in the sender, which maps it to the caller's error
            put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a stopped op: GeneratorExit at its yield, so its own cleanup runs

    thread = threading.Thread(target=contextvars.copy_context().run, args=(pump,), name="job-events", daemon=True)
    thread.start()
    ended = False
    try:
        while not ended:
            group, events = [handed.get()], Batch()
            while len(group) < limit and not handed.empty():
                group.append(handed.get_nowait())
            for item in group:
                if item is _END:
                    ended = True
                elif isinstance(item, _Raised):
                    if events:
                        yield events
                    raise item.exc
                elif isinstance(item, Final) and final_in_batch:
                    events.append(item)
                elif isinstance(item, Final):
                    if events:
                        yield events
                        events = Batch()
                    yield item
                else:
                    events.append(item)
            if events:
                yield events
    finally:
        if not ended:  # the reader went away (cancelled, or its actor is stopping): the op stops at its next yield
            ctx._cancelled = True
            stopped.set()
            thread.join()  # and has stopped before the call ends (a session's next call must not overlap it)


def job_checkpoint(ctx: Context, obj: Any) -> None:
    """A job's ``ctx.checkpoint``: a :class:`~orchestrator.types.Checkpoint` in its batched stream, after the
    events (progress included) reported before it. The coordinator stores it with them, in one transaction;
    the op goes on without waiting for the store."""
    emit = ctx._emit
    if emit is None:
        raise RuntimeError("a job's checkpoint needs its batched stream")
    for event in pending_progress(ctx):  # progress reported before the checkpoint is logged before it
        emit(event)
    if not emit(Checkpoint(pickle.dumps(obj))):
        ctx._cancelled = True  # nobody reads this run any more: the op should stop


def pending_progress(ctx: Context) -> Iterator[Any]:
    """Progress events the op reported since its last yield."""
    while ctx.pending:
        ctx.yielded += 1
        yield ctx.pending.pop(0)


def to_error(exc: BaseException, pool: str, op: str | None, env_file: str | None, debug: bool) -> OrchestratorError:
    """The OrchestratorError a caller sees for an exception raised while running ``op``."""
    if isinstance(exc, OrchestratorError):
        error = exc
    elif isinstance(exc, ImportError):
        where = env_file or f"envs/{pool}/requirements.txt"
        error = DependencyMissing(
            f"module {exc.name or str(exc)!r} is not installed in pool {pool!r}: add it to {where}",
            detail={"module": exc.name, "env_file": where},
        )
    elif is_cuda_oom(exc):
        empty_cuda_cache()
        error = GpuOom(f"CUDA out of memory: {exc}")
    else:
        detail: dict[str, Any] = {"type": type(exc).__name__}
        if debug:
            detail["traceback"] = "".join(traceback.format_exception(exc))
        error = OpFailed(f"{type(exc).__name__}: {exc}", detail=detail)
    error.pool = error.pool or pool
    error.op = error.op or op
    return error


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("torch")


def empty_cuda_cache() -> None:
    """Give cached CUDA memory back (after an OOM), if torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory() -> int | None:
    """CUDA memory this process has reserved, if it uses CUDA (None otherwise)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_reserved())
