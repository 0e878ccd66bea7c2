"""Helpers the bench scripts share (run them as ``python bench/<name>.py`` from the repository root)."""

from __future__ import annotations

import json
import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path
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


def machine(ray_num_cpus: float | None = None, **extra: Any) -> dict[str, Any]:
    """Where a benchmark ran, for its JSON report (``extra``: e.g. load averages, versions)."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "platform": platform.platform(),
        **({"ray_num_cpus": ray_num_cpus} if ray_num_cpus is not None else {}),
        **extra,
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (its folder created if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
