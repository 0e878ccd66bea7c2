"""Helpers the bench scripts share (run them as ``python bench/<name>.py`` from the repository root)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

POLL_S = 0.01


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, period: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def raw_restart(actor: Any) -> float:
    """SIGKILL a ``max_restarts=-1`` raw actor with a ``pid()`` method; seconds until its restarted process answers."""
    pid = ray.get(actor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    while time.perf_counter() - start < 60:
        try:
            if ray.get(actor.pid.remote(), timeout=30) != pid:
                return time.perf_counter() - start
        except RayError:
            time.sleep(POLL_S)
    raise RuntimeError("the raw actor did not come back within 60s")
