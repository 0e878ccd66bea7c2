"""Autoscaling within ``size.min..size.max``: add an actor when the load per actor stays at or above the
target, remove the newest one after a cool-down when one actor fewer would carry the load easily.

Load is the pool's outstanding work: the calls its ready actors run (their last health ping) plus
its queued jobs. One actor is added at a time, and only while no other is starting: on a cluster an
actor that cannot be placed waits as ``pending``, the demand Ray's autoscaler adds nodes for. An
actor is removed only from the end of the pool (slot indexes stay stable for sessions and names),
never below ``min``, and never while it holds a session or runs a job. Each decision is a pool
event (``scale_up`` / ``scale_down``) that status shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.config.schema import Pool
from orchestrator.control.pools import ActorSlot, PoolState

UP, DOWN = 1, -1


@dataclass
class Trend:
    """Since when a pool's load has been high (or low): the decision needs it to last."""

    high_since: float | None = None
    low_since: float | None = None


def target(spec: Pool) -> float:
    """Load per actor that asks for one more (default: every actor running ``concurrency`` calls)."""
    return spec.autoscale.target if spec.autoscale.target is not None else float(spec.limits.concurrency)


def decide(spec: Pool, load: float, ready: int, actors: int, trend: Trend, now: float) -> int:
    """UP, DOWN or 0 for a pool of ``actors`` (``ready`` of them serving) carrying ``load``; updates ``trend``.

    Pure: the rule, without Ray. UP when the load per ready actor has been at or above the target
    for ``up_after_s`` (with no ready actor: any load); DOWN when ``actors - 1`` would have carried
    it at half the target for ``down_after_s``.
    """
    top = spec.size.max if spec.size.max is not None else spec.size.min
    goal = target(spec)
    high = load > 0 if ready == 0 else load / ready >= goal
    low = actors > 0 and load <= (actors - 1) * goal / 2 and not high
    trend.high_since = (trend.high_since if trend.high_since is not None else now) if high else None
    trend.low_since = (trend.low_since if trend.low_since is not None else now) if low else None
    if high and actors < top and now - trend.high_since >= spec.autoscale.up_after_s:  # type: ignore[operator]
        return UP
    if low and actors > spec.size.min and now - trend.low_since >= spec.autoscale.down_after_s:  # type: ignore[operator]
        return DOWN
    return 0


class Autoscaler:
    """Applies ``decide`` to every pool each supervision tick, through the supervisor's add and remove."""

    def __init__(
        self,
        pools: Mapping[str, PoolState],
        queued_jobs: Callable[[str], int],
        busy: Callable[[PoolState, ActorSlot], bool],
        add: Callable[[PoolState, str], None],
        remove: Callable[[PoolState, ActorSlot, str], None],
    ) -> None:
        self.pools = pools
        self.queued_jobs = queued_jobs  # a pool's jobs waiting for a free actor
        self.busy = busy  # holds a session or runs a job: never removed
        self.add, self.remove = add, remove
        self.trends: dict[str, Trend] = {}

    def step(self, pool: PoolState, now: float | None = None) -> None:
        """One decision for one pool; a change resets its trend (the next needs its own evidence)."""
        spec = pool.spec
        if pool.state != "running" or spec.size.max is None or spec.size.max <= spec.size.min:
            return
        now = time.monotonic() if now is None else now
        ready = [s for s in pool.slots if s.state == "ready"]
        load = sum(int(s.stats.get("inflight", 0)) for s in ready) + self.queued_jobs(pool.name)
        trend = self.trends.setdefault(pool.name, Trend())
        changing = any(s.state in ("starting", "pending", "draining") for s in pool.slots)
        verdict = decide(spec, load, len(ready), len(pool.slots), trend, now)
        per_actor = f"{load / len(ready):g}" if ready else f"{load} (no actor ready)"
        if verdict == UP and not changing:
            self.trends[pool.name] = Trend()
            up_after = spec.autoscale.up_after_s
            self.add(pool, f"load {per_actor} per actor >= target {target(spec):g} for {up_after:g}s")
        elif verdict == DOWN:
            last = pool.slots[-1]
            idle = last.state != "ready" or not last.stats.get("inflight")
            if last.state in ("ready", "starting", "pending") and idle and not self.busy(pool, last):
                self.trends[pool.name] = Trend()
                fewer, cool = len(pool.slots) - 1, spec.autoscale.down_after_s
                self.remove(pool, last, f"load {per_actor} per actor: {fewer} actor(s) carry it (cool-down {cool:g}s)")
