"""How the CLI prints: plain-text tables, JSON, start-up lines and job progress.

Only the standard library: this module is on the path of the client commands,
which run where nothing but httpx and pydantic is installed. Output is plain
lines on stdout. Piped output is read by scripts and tests, so nothing here
knows a terminal width and no cell or line is ever cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

# A row of a table: its cells, or one string printed as a heading line across the table.
Row = Sequence[str] | str


def say(line: str) -> None:
    """Print one line now (flushed: a pipe sees it as it happens, not when the command ends)."""
    print(line, flush=True)


def as_json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON; what JSON cannot hold (datetimes, say) as its ``str``."""
    return json.dumps(value, indent=indent, default=str)


def format_table(columns: Sequence[str], rows: Iterable[Row], title: str | None = None) -> str:
    """A table with each column as wide as its widest cell, under a title, a header and a rule."""
    rows = list(rows)
    cells = [list(columns)] + [list(row) for row in rows if not isinstance(row, str)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    lines = [title] if title else []
    lines += [line(columns), line(["-" * width for width in widths])]
    lines += [row if isinstance(row, str) else line(row) for row in rows]
    return "\n".join(lines)


def human_bytes(value: int | None) -> str:
    """A byte count as B, KiB, MiB or GiB; ``-`` when unknown."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def with_reason(record: dict[str, Any]) -> str:
    """A pool's or an actor's state, followed by why when there is a reason (``pending: building env``)."""
    return record["state"] + (f": {record['reason']}" if record.get("reason") else "")


def pool_heading(pool: dict[str, Any]) -> str:
    """One line for a pool: state, sessions, queue and its jobs by status."""
    queue = f", queued {pool['queued']}" if pool.get("queued") else ""
    jobs = ", ".join(f"{n} {state}" for state, n in sorted((pool.get("jobs") or {}).items()))
    jobs = f"; jobs: {jobs}" if jobs else ""
    size = pool.get("size") or {}
    scaling = f"; {size['actors']} actor(s), autoscaled {size['min']}..{size['max']}" if _autoscaled(size) else ""
    return f"{pool['name']} ({with_reason(pool)}{scaling}; {pool['sessions']} session(s){queue}{jobs})"


def _autoscaled(size: dict[str, Any]) -> bool:
    return size.get("max") is not None and size["max"] > size["min"] and "actors" in size


def progress_text(progress: dict[str, Any] | None) -> str:
    """An op's latest ``ctx.progress`` in a few characters: ``3/10`` for done/total, else ``key=value`` pairs."""
    if not progress:
        return ""
    counts = progress_of(progress)
    if counts is not None:
        return f"{counts[0]:g}/{counts[1]:g}"
    return " ".join(f"{key}={value}" for key, value in progress.items())


def running_cell(actor: dict[str, Any]) -> str:
    """What an actor runs now: each op with its progress and seconds (``trials 3/10 4s``), or ``-``."""
    calls = [
        " ".join(part for part in (call["op"], progress_text(call.get("progress")), f"{call['seconds']:.0f}s") if part)
        for call in actor.get("running") or []
    ]
    return ", ".join(calls) or "-"


def last_restart(actor: dict[str, Any]) -> str:
    """Why the actor's slot last got a new actor, or ``-``."""
    restart = actor.get("last_restart")
    return str(restart["reason"]) if restart else "-"


def status_table(pools: Iterable[dict[str, Any]]) -> str:
    """Pools and their actors: a heading row per pool, then a row per actor (what it runs, why it last restarted)."""
    rows: list[Row] = []
    for pool in pools:
        rows.append(pool_heading(pool))
        for actor in pool["actors"]:
            rows.append(
                [
                    f"  {actor['name']}",
                    with_reason(actor),
                    str(actor["pid"] or "-"),
                    str(actor["calls"]),
                    str(actor["inflight"]),
                    str(actor["sessions"]),
                    running_cell(actor),
                    str(actor["restarts"]),
                    human_bytes(actor["rss"]),
                    human_bytes(actor.get("gpu_memory")),
                    last_restart(actor),
                    holds_cell(actor),
                ]
            )
    columns = ["actor", "state", "pid", "calls", "busy", "sessions", "running", "restarts", "memory", "gpu memory"]
    columns += ["last restart", "holds"]
    return format_table(columns, rows, title="pools")


def holds_cell(actor: dict[str, Any]) -> str:
    """What the actor's worker says it holds: a programs actor's loaded versions (``rag v1,2 live 2``)."""
    holds = actor.get("holds") or {}
    loaded = holds.get("programs")
    if loaded:
        return "; ".join(
            f"{name} v{','.join(map(str, p['versions']))} live {p['live'] if p['live'] is not None else '-'}"
            for name, p in loaded.items()
        )
    return ", ".join(f"{key}: {value}" for key, value in holds.items()) or "-"


def age(created: float) -> str:
    """Seconds since ``created`` (a Unix time), whole."""
    return f"{time.time() - created:.0f}"


def sessions_table(sessions: Iterable[dict[str, Any]]) -> str:
    """Open sessions: id, pool, the actor slot that holds them, age and TTL."""
    rows = [[s["id"], s["pool"], str(s["slot"]), age(s["created"]), str(s["ttl_s"] or "-")] for s in sessions]
    return format_table(("id", "pool", "actor slot", "age (s)", "ttl (s)"), rows, title="sessions")


def jobs_table(jobs: Iterable[dict[str, Any]]) -> str:
    """Jobs, one row each: id, pool, op, status, attempts, events logged and age."""
    rows = [
        [j["id"], j["pool"], j["op"], j["status"], str(j["attempts"]), str(j["events"]), age(j["created"])]
        for j in jobs
    ]
    return format_table(("id", "pool", "op", "status", "attempts", "events", "age (s)"), rows, title="jobs")


class StartupLines:
    """The pools' status, polled while they start, as one line per pool or actor state change.

    A live table would redraw in place; lines read the same in a terminal, a
    pipe and a log file, and say when each actor moved on.
    """

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def changes(self, status: dict[str, dict[str, Any]]) -> list[str]:
        """The lines for what changed since the last call (everything on the first)."""
        lines = []
        for pool in status.values():
            named = [(f"pool {pool['name']}", with_reason(pool))]
            named += [(f"  {actor['name']}", with_reason(actor)) for actor in pool["actors"]]
            for name, state in named:
                if self.seen.get(name) != state:
                    self.seen[name] = state
                    lines.append(f"{name}: {state}")
        return lines

    def __call__(self, status: dict[str, dict[str, Any]]) -> None:
        """Print the changes: this is the ``on_progress`` callback of ``start``."""
        for line in self.changes(status):
            say(line)


def progress_of(event: Any) -> tuple[float, float] | None:
    """``(done, total)`` when a job event carries progress (``{"progress": {"done", "total"}}`` or bare)."""
    fields = event.get("progress", event) if isinstance(event, dict) else None
    if not isinstance(fields, dict):
        return None
    done, total = fields.get("done"), fields.get("total")
    if isinstance(done, bool) or isinstance(total, bool):  # bool is an int, but not a count
        return None
    if isinstance(done, int | float) and isinstance(total, int | float):
        return done, total
    return None


def progress_bar(done: float, total: float, width: int = 10) -> str:
    """``[#####.....] 5/10``."""
    filled = min(width, max(0, int(width * done / total))) if total > 0 else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def event_lines(seq: int, event: Any) -> list[str]:
    """A job event as lines: its JSON, and a progress bar when it carries done/total.

    An event that is only progress prints as its bar alone.
    """
    progress = progress_of(event)
    only_progress = isinstance(event, dict) and set(event) == {"progress"}
    lines = [] if progress and only_progress else [f"{seq} {as_json(event)}"]
    if progress:
        lines.append(f"{seq} {progress_bar(*progress)}")
    return lines
