"""Pool and actor-slot state kept by the coordinator: plain data and pure rules.

Nothing here talks to Ray, so the supervision rules (restart intensity,
placement reasons, session placement) are unit-tested without a cluster.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.schema import Pool

EVENT_LOG = 50  # recent events kept per pool for status


@dataclass
class ActorSlot:
    """One position in a pool; its actor is replaced on restart or recycle."""

    pool: str
    index: int
    gen: int = 0
    handle: Any = None
    state: str = "starting"  # starting | pending | ready | draining | dead | stopped
    reason: str | None = None
    actor_id: str | None = None
    pid: int | None = None
    node_id: str | None = None
    since: float = field(default_factory=time.time)
    last_ping: float = 0.0
    pinging: bool = False
    stats: dict[str, Any] = field(default_factory=dict)  # the actor's last ping answer
    last_restart: dict[str, Any] | None = None  # {"time", "reason"}: why the slot last got a new actor

    @property
    def name(self) -> str:
        """The Ray actor name operators see in the dashboard: ``<pool>-<i>`` (``.<gen>`` after a restart)."""
        return f"{self.pool}-{self.index}" if self.gen == 0 else f"{self.pool}-{self.index}.{self.gen}"

    def next_generation(self, reason: str) -> None:
        """Give the slot a new generation (its next actor), remembering why for status."""
        self.gen += 1
        self.last_restart = {"time": time.time(), "reason": reason}

    def running(self, now: float | None = None) -> list[dict[str, Any]]:
        """The ops the actor ran at its last ping, longest-running first: op, call and job id (and a job's Ray
        task name), progress, seconds."""
        now = time.time() if now is None else now
        calls = [
            {
                "op": call["op"],
                "call_id": call_id,
                "job_id": call.get("job_id"),
                "task": call.get("task"),
                "session": call.get("session"),
                "progress": call.get("progress"),
                "seconds": round(max(0.0, now - call["started"]), 1),
            }
            for call_id, call in (self.stats.get("running") or {}).items()
        ]
        return sorted(calls, key=lambda call: -call["seconds"])

    def status(self, sessions: int) -> dict[str, Any]:
        """The slot as status shows it."""
        return {
            "name": self.name,
            "index": self.index,
            "state": self.state,
            "reason": self.reason,
            "pid": self.pid,
            "node_id": self.node_id,
            "restarts": self.gen,
            "last_restart": self.last_restart,
            "rss": self.stats.get("rss"),
            "gpu_memory": self.stats.get("gpu_memory"),
            "holds": self.stats.get("holds"),
            "calls": self.stats.get("calls", 0),
            "inflight": self.stats.get("inflight", 0),
            "sessions": sessions,
            "running": self.running() if self.state in ("ready", "draining") else [],  # a dead actor runs nothing
        }


class RestartIntensity:
    """OTP's rule: more than ``max_restarts`` restarts within ``within_s`` fails the pool."""

    def __init__(self, max_restarts: int, within_s: float) -> None:
        self.max_restarts, self.within_s = max_restarts, within_s
        self.times: deque[float] = deque()

    def allow(self, now: float | None = None) -> bool:
        """Record a restart at ``now``; False when it exceeds the intensity."""
        now = time.monotonic() if now is None else now
        while self.times and now - self.times[0] > self.within_s:
            self.times.popleft()
        if len(self.times) >= self.max_restarts:
            return False
        self.times.append(now)
        return True


@dataclass
class PoolState:
    """A pool as the coordinator tracks it."""

    name: str
    spec: Pool
    state: str = "starting"  # starting | running | failed | stopped
    reason: str | None = None
    slots: list[ActorSlot] = field(default_factory=list)
    ops: dict[str, Any] = field(default_factory=dict)
    intensity: RestartIntensity = field(init=False)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_LOG))
    counters: dict[str, int] = field(default_factory=lambda: {"restarts": 0, "recycles": 0, "hung": 0})
    failed_at: float = 0.0  # monotonic time the pool failed
    retries: int = 0  # automatic restarts since the last one by request (restart.retry_after_s)

    def __post_init__(self) -> None:
        self.intensity = RestartIntensity(self.spec.restart.max_restarts, self.spec.restart.within_s)
        self.slots = [ActorSlot(self.name, i) for i in range(self.spec.size.min)]

    def event(self, kind: str, actor: str | None = None, reason: str | None = None) -> None:
        """Append to the pool's recent events (status shows them)."""
        self.events.append({"time": time.time(), "kind": kind, "actor": actor, "reason": reason})

    def resource_request(self) -> dict[str, float]:
        """What one actor asks of a node, in Ray's resource names."""
        res = self.spec.resources
        request = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
        if res.memory:
            request["memory"] = float(res.memory)
        return {k: v for k, v in request.items() if v}


def fits(request: dict[str, float], available: dict[str, float]) -> bool:
    """True when one node with ``available`` can hold ``request``."""
    return all(available.get(name, 0.0) + 1e-9 >= amount for name, amount in request.items())


def pending_reason(request: dict[str, float], nodes: list[dict[str, dict[str, float]]]) -> str | None:
    """Why an actor asking for ``request`` cannot be placed now, or None if some node could take it.

    ``nodes`` holds each alive node's ``total`` and ``available`` resources.
    """
    if any(fits(request, node["available"]) for node in nodes):
        return None
    wanted = ", ".join(f"{k}={_amount(k, v)}" for k, v in sorted(request.items()))
    if not any(fits(request, node["total"]) for node in nodes):
        return f"infeasible: no node has {wanted} in total; add a node with these resources or lower the request"
    free = ", ".join(
        "{" + ", ".join(f"{k}={_amount(k, node['available'].get(k, 0.0))}" for k in sorted(request)) + "}"
        for node in nodes
    )
    return f"waiting for resources: needs {wanted}; free per node: {free}"


def demanded(request: dict[str, float], demands: list[dict[str, float]]) -> bool:
    """True when Ray lists a resource demand of ``request``'s shape as unplaced (so the actor waits for resources)."""
    return any(
        set(bundle) == set(request) and all(abs(bundle[k] - request[k]) < 1e-6 for k in request) for bundle in demands
    )


def _amount(name: str, value: float) -> str:
    if name == "memory" or name.endswith("memory"):
        return f"{value / 1024**3:.1f}GiB" if value >= 1024**3 else f"{value / 1024**2:.0f}MiB"
    return f"{value:g}"


def choose_session_slot(slots: list[ActorSlot], counts: dict[int, int], per_worker: int) -> ActorSlot | None:
    """The ready slot with the fewest sessions that still has room (``per_worker`` 0 = no limit)."""
    candidates = [s for s in slots if s.state == "ready" and (per_worker == 0 or counts.get(s.index, 0) < per_worker)]
    return min(candidates, key=lambda s: counts.get(s.index, 0), default=None)
