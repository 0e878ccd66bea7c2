"""Metrics through Ray's metrics API (``ray.util.metrics``): Ray's metrics agent on each node exports them.

Prometheus scrapes them from every node's metrics export port (Ray prefixes
``ray_``, and counters end in ``_total``: ``ray_orchestrator_calls_total``);
the Ray dashboard's Metrics view and ``grafana/orchestrator.json`` chart them.
Each process records its own part: counters and gauges add up in the process
and its metrics thread hands them to Ray's core worker once a second, which
exports them; recording costs a dict update and never blocks:

    pool actors   calls (pool, op, outcome), call_seconds (pool, op), inflight (pool, actor)
    programs pool program_runs (program, version, outcome), program_run_seconds (program, version)
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


class _Reporter:
    """The process's one metrics thread: every ``PERIOD_S`` it hands Ray what was recorded since its last turn.

    Counters add up here and gauges keep their last value here, so recording
    one costs a dict update under a lock, not a call into Ray's core worker on
    the op's path. Held gauges are reported again every turn: Ray exports a
    gauge only in the report interval it was set in, so a value set once
    (sessions open, a call running) would vanish from the next scrape.
    """

    PERIOD_S = 1.0
    metrics: ClassVar[list[_Summed | _Held]] = []
    lock = threading.Lock()
    thread: ClassVar[threading.Thread | None] = None

    @classmethod
    def register(cls, metric: _Summed | _Held) -> None:
        with cls.lock:
            cls.metrics.append(metric)
            if cls.thread is None:
                cls.thread = threading.Thread(target=cls._run, name="metrics-reporter", daemon=True)
                cls.thread.start()

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(cls.PERIOD_S)
            for metric in list(cls.metrics):
                metric.report()


def _key(tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((tags or {}).items()))


class _Summed:
    """A counter whose increments add up in the process until the reporter's next turn."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.pending: dict[tuple[tuple[str, str], ...], float] = {}
        self.lock = threading.Lock()
        _Reporter.register(self)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = _key(tags)
        with self.lock:
            self.pending[key] = self.pending.get(key, 0.0) + value

    def report(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        for key, value in pending.items():
            self.counter.inc(value, tags=dict(key))


class _Held:
    """A gauge holding its last value per series; the reporter reports every series each turn."""

    def __init__(self, gauge: Any) -> None:
        self.gauge = gauge
        self.values: dict[tuple[tuple[str, str], ...], float] = {}
        _Reporter.register(self)

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        """Set one series (reported within the reporter's period)."""
        self.values[_key(tags)] = value or 0.0

    def forget(self, tags: dict[str, str]) -> None:
        """Stop reporting one series (an actor that is gone): it drops out of the export."""
        self.values.pop(_key(tags), None)

    def report(self) -> None:
        for key, value in list(self.values.items()):
            self.gauge.set(value, tags=dict(key))


def _make(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    if not ENABLED:
        return _Off()
    from ray.util import metrics

    if kind == "counter":
        return _Summed(metrics.Counter(name, description, tag_keys=tags))
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
program_runs = _metric(
    "counter", "orchestrator_program_runs", "Program runs, by version and outcome.", ("program", "version", "outcome")
)
program_run_seconds = _metric(
    "histogram", "orchestrator_program_run_seconds", "Program run duration.", ("program", "version")
)
sse_open = _metric("gauge", "orchestrator_sse_open", "Open SSE streams.", ("route",))
