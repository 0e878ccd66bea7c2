"""The env commands: ``envs build`` (each ``venv`` pool's virtualenv, with progress) and ``envs list``.

They need the server install (Ray's version is part of an env's key): the
server parts are imported inside the functions, as in ``server``. ``EnvLines``
is also ``up``'s progress display for the envs it builds before the pools start.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cli.render import Row, format_table, human_bytes, say
from orchestrator.errors import InvalidConfig

if TYPE_CHECKING:
    from orchestrator.config.venvs import BuiltEnv, EnvProgress

# Installer lines naming one package each (uv's `+ torch==2.13.0`: a torch env has a hundred), and uv's advice
# to activate an env nobody activates; the summaries stay.
_QUIET_LINES = ("+ ", "- ", "~ ", "Activate with")


class EnvLines:
    """Env build progress as lines (``env light: ...``), each installer line with the seconds since its build began.

    Plain lines, as ``render`` prints everything: they read the same in a terminal, a pipe and a log.
    """

    def __init__(self) -> None:
        self.began: dict[str, float] = {}

    def __call__(self, event: EnvProgress) -> None:
        """Print one step: this is the ``on_env_progress`` callback of ``start``."""
        if event.stage == "building":
            self.began[event.pool] = time.monotonic()
        if event.stage != "output":
            say(f"env {event.pool}: {event.stage} {event.message}")
        elif not event.message.lstrip().startswith(_QUIET_LINES):
            seconds = time.monotonic() - self.began.get(event.pool, time.monotonic())
            say(f"env {event.pool}: [{seconds:5.1f}s] {event.message.strip()}")


def built_table(built: list[BuiltEnv]) -> str:
    """One row per env: pool, path, size on disk (``du -s``: hard links once), time, cached or built."""
    from orchestrator.config.venvs import disk_usage

    rows: list[Row] = [
        [
            b.plan.pool,
            str(b.plan.path),
            human_bytes(disk_usage([b.plan.path])),
            f"{b.seconds:.1f}s",
            "cached" if b.cached else "built",
        ]
        for b in built
    ]
    if len(built) > 1:
        rows.append(total_line([b.plan.path for b in built]))
    return format_table(("pool", "env", "size", "time", "result"), rows, title="envs")


def total_line(paths: list[Path]) -> str:
    """The disk use of several envs together: what they share (hard links) counted once."""
    from orchestrator.config.venvs import disk_usage

    return f"total on disk, files shared between them counted once: {human_bytes(disk_usage(paths))}"


def cmd_envs_build(args: argparse.Namespace) -> int:
    """Build each pool's virtualenv (default: every `env_manager: venv` pool) unless it is built already.

    An env holds the pool's requirements (its env folder's requirements.txt), Ray and what the orchestrator's
    code needs on an actor; it lives under $ORCHESTRATOR_ENVS_DIR (default ~/.cache/orchestrator/envs), named
    by a hash of those, so a changed requirements file builds a new one. `orchestrator up` builds what is missing.
    """
    from orchestrator.config import load_config
    from orchestrator.config.venvs import ensure_envs, envs_root, venv_pools

    config = load_config(args.config)
    unknown = [name for name in args.pools if name not in config.pools]
    if unknown:
        known = ", ".join(sorted(config.pools)) or "none"
        raise InvalidConfig(f"{args.config}: no pool {', '.join(map(repr, unknown))} (pools: {known})")
    names = args.pools or venv_pools(config)
    if not names:
        say(f"no pool in {args.config} builds its own env (env_manager: venv with a requirements file)")
        return 0
    say(f"building {len(names)} env(s) under {envs_root()}")
    _, built = ensure_envs(config, EnvLines(), names)
    say(built_table(built))
    return 0


def cmd_envs_list(args: argparse.Namespace) -> int:
    """List the envs under $ORCHESTRATOR_ENVS_DIR: pool, path, size on disk, built or incomplete, current.

    `current` says whether the pools file's pool would use the env now (an older one was built from other
    requirements, another Python or Ray, and can be deleted).
    """
    from orchestrator.config import load_config
    from orchestrator.config.venvs import disk_usage, envs_root, list_envs, plan

    current: set[Path] = set()
    if Path(args.config).is_file():
        config = load_config(args.config)
        current = {target.path for name in config.pools if (target := plan(config, name)) is not None}
    found = list_envs()
    rows: list[Row] = [
        [
            env["pool"],
            str(env["path"]),
            human_bytes(disk_usage([env["path"]])),
            "built" if env["built"] else "incomplete",
            "yes" if env["path"] in current else "no",
        ]
        for env in found
    ]
    if len(found) > 1:
        rows.append(total_line([env["path"] for env in found]))
    say(format_table(("pool", "env", "size", "state", "current"), rows, title=f"envs in {envs_root()}"))
    return 0
