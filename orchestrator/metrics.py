"""Metrics through Ray's metrics API (``ray.util.metrics``): Ray's metrics agent on each node exports them.

Prometheus scrapes them from every node's metrics export port (Ray prefixes
``ray_``, and counters end in ``_total``: ``ray_orchestrator_calls_total``);
the Ray dashboard's Metrics view and ``grafana/orchestrator.json`` chart them.
Each process records its own part, and Ray's core worker aggregates and
exports them, so recording costs a few microseconds and never blocks:

    pool actors   calls (pool, op, outcome), call_seconds (pool, op), inflight (pool, actor)
    callers       overloaded (pool), queued (pool)
    coordinator   restarts (pool, reason), actor_rss_bytes / actor_gpu_memory_bytes (pool, actor),
                  sessions (pool), sessions_restored / sessions_lost (pool), jobs (pool, status),
                  jobs_finished (pool, status), job_events (pool), checkpoint_bytes (pool, kind)
    gateway       http_requests (route, method, status), http_seconds (route), sse_open (route)

``ORCHESTRATOR_METRICS=0`` in a process's environment turns its recording off
(the benchmark's comparison point).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

ENABLED = os.environ.get("ORCHESTRATOR_METRICS", "1") != "0"
SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800]


class _Off:
    """What a metric is when recording is off: every method does nothing."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass

    def forget(self, tags: dict[str, str]) -> None:
        pass


class _Held:
    """A gauge that keeps reporting its last values: Ray exports a gauge only in the report interval it
    was set in, so a value set once (sessions open, a call running) would vanish from the next scrape.
    One daemon thread per process sets every held value again every ``REPEAT_S``."""

    REPEAT_S = 2.0
    held: ClassVar[list[_Held]] = []
    lock = threading.Lock()
    thread: ClassVar[threading.Thread | None] = None

    def __init__(self, gauge: Any) -> None:
        self.gauge = gauge
        self.values: dict[tuple[tuple[str, str], ...], float] = {}
        with _Held.lock:
            _Held.held.append(self)
            if _Held.thread is None:
                _Held.thread = threading.Thread(target=_Held._repeat, name="metrics-gauges", daemon=True)
                _Held.thread.start()

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        """Set one series; an unchanged value costs a dict lookup (the repeating thread keeps reporting it)."""
        key, value = tuple(sorted((tags or {}).items())), value or 0.0
        if self.values.get(key) == value:
            return
        self.values[key] = value
        self.gauge.set(value, tags=tags)

    def forget(self, tags: dict[str, str]) -> None:
        """Stop reporting one series (an actor that is gone): it drops out of the export."""
        self.values.pop(tuple(sorted(tags.items())), None)

    @staticmethod
    def _repeat() -> None:
        while True:
            time.sleep(_Held.REPEAT_S)
            for held in list(_Held.held):
                for key, value in list(held.values.items()):
                    held.gauge.set(value, tags=dict(key))


def _make(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    if not ENABLED:
        return _Off()
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description, tag_keys=tags)
    if kind == "gauge":
        return _Held(metrics.Gauge(name, description, tag_keys=tags))
    return metrics.Histogram(name, description, boundaries=SECONDS, tag_keys=tags)


# One getter per metric: the metric object is made on first use in each process (Ray must be up by then).
def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Callable[[], Any]:
    return cache(lambda: _make(kind, name, description, tags))


calls = _metric("counter", "orchestrator_calls", "Op calls finished, by outcome.", ("pool", "op", "outcome"))
call_seconds = _metric("histogram", "orchestrator_call_seconds", "Op call duration on the actor.", ("pool", "op"))
inflight = _metric("gauge", "orchestrator_inflight", "Calls running on the actor.", ("pool", "actor"))
overloaded = _metric("counter", "orchestrator_overloaded", "Calls refused as overloaded.", ("pool",))
queued = _metric("gauge", "orchestrator_queued", "Calls waiting for an actor, per caller.", ("pool",))
restarts = _metric("counter", "orchestrator_restarts", "Actors replaced, by reason.", ("pool", "reason"))
pool_actors = _metric("gauge", "orchestrator_pool_actors", "Actors in the pool (its size now).", ("pool",))
scaled = _metric("counter", "orchestrator_scaled", "Autoscaling decisions (up, down).", ("pool", "direction"))
actor_rss = _metric("gauge", "orchestrator_actor_rss_bytes", "Actor resident memory.", ("pool", "actor"))
actor_gpu_memory = _metric("gauge", "orchestrator_actor_gpu_memory_bytes", "Actor GPU memory.", ("pool", "actor"))
sessions = _metric("gauge", "orchestrator_sessions", "Open sessions.", ("pool",))
sessions_restored = _metric(
    "counter", "orchestrator_sessions_restored", "Sessions restored after a restart.", ("pool",)
)
sessions_lost = _metric("counter", "orchestrator_sessions_lost", "Sessions lost.", ("pool",))
jobs = _metric("gauge", "orchestrator_jobs", "Jobs by status (queued, running).", ("pool", "status"))
jobs_finished = _metric("counter", "orchestrator_jobs_finished", "Jobs finished, by status.", ("pool", "status"))
job_events = _metric("counter", "orchestrator_job_events", "Job events logged.", ("pool",))
checkpoint_bytes = _metric("counter", "orchestrator_checkpoint_bytes", "Checkpoint bytes stored.", ("pool", "kind"))
http_requests = _metric("counter", "orchestrator_http_requests", "Gateway requests.", ("route", "method", "status"))
http_seconds = _metric("histogram", "orchestrator_http_seconds", "Gateway request latency.", ("route",))
sse_open = _metric("gauge", "orchestrator_sse_open", "Open SSE streams.", ("route",))
