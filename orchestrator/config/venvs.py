"""Per-pool virtualenvs the orchestrator builds itself (``env_manager: venv``), cached by what goes in them.

A ``venv`` pool whose env folder lists requirements gets its own virtualenv holding
``envs/<pool>/requirements.txt``, ``ray[default]`` at our Ray's version and ``ACTOR_REQUIREMENTS`` (what the
orchestrator's code imports on an actor). Not the orchestrator package itself: the project's code reaches the
actors through the runtime_env's ``py_modules``. Python is our interpreter. ``launch.start`` builds what is
missing and hands the coordinator a config whose pool has ``py_executable`` set to the env's python, so Ray
starts the actors with it (``envs.runtime_env``). A ``venv`` pool with no requirement lines runs in our own env.

Layout: ``<root>/<pool>-<key>`` (root: ``$ORCHESTRATOR_ENVS_DIR``, else ``~/.cache/orchestrator/envs``), the key a
hash of the requirement lines, our Python, our Ray and ``ACTOR_REQUIREMENTS``: a changed input is a new folder,
so a built env is never modified. An env is complete once its marker (``MARKER``, written last, after the env
answered with the right Python and Ray) exists; a folder without it is a crashed build, removed and rebuilt.
Builds of one env are serialized by a lock file beside it. The env is built in place, not renamed into place:
a virtualenv is not relocatable (console scripts hold its absolute path).

The installer is uv when found (``uv venv`` + ``uv pip install --link-mode hardlink``: uv's cache makes a second
env with torch nearly free), else ``python -m venv`` + the env's pip. uv does not read pip's configuration, so
pip's index-url, extra-index-url and find-links are passed on to it. Both compile the bytecode at install, as pip
does by default: an actor then never compiles torch at start (nor every start, where PYTHONDONTWRITEBYTECODE is set).

Only the machine that builds an env has it: on a multi-node cluster, ``ORCHESTRATOR_ENVS_DIR`` must be a
folder every node sees at the same path, or the pool uses ``env_manager: uv``/``pip`` (Ray builds on each node).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.envs import check_py_executable, requirements
from orchestrator.config.schema import Config
from orchestrator.errors import InvalidConfig

ENVS_DIR_ENV = "ORCHESTRATOR_ENVS_DIR"
INSTALLER_ENV = "ORCHESTRATOR_ENV_INSTALLER"  # "pip" forces the fallback even where uv is found
MARKER = "orchestrator-env.json"
LAYOUT = 1  # bump when what goes into an env changes in a way the inputs below do not show
# What orchestrator.runtime.host and orchestrator.contract import on an actor besides Ray (the `server` extra's
# and the base install's specifiers; tests/test_envs.py checks they stay the same as pyproject.toml's).
ACTOR_REQUIREMENTS = ("pydantic>=2.7,<3", "httpx>=0.27", "pyyaml>=6", "psutil>=5.9")


@dataclass(frozen=True)
class EnvProgress:
    """One step of an env build, for ``on_progress``: stage is checking, cached, building, output, built or failed."""

    pool: str
    stage: str
    message: str


Progress = Callable[[EnvProgress], None]


@dataclass(frozen=True)
class VenvPlan:
    """Where one pool's env lives and what goes in it (reading the requirements file is its only I/O)."""

    pool: str
    env_file: Path
    packages: tuple[str, ...]
    key: str
    path: Path

    @property
    def python(self) -> Path:
        """The env's interpreter: the pool's ``py_executable``."""
        return self.path / "bin" / "python"

    @property
    def marker(self) -> Path:
        """Written last: an env without it is not used."""
        return self.path / MARKER

    def built(self) -> bool:
        """Whether the env is complete."""
        return self.marker.is_file()


@dataclass(frozen=True)
class BuiltEnv:
    """An env ``ensure`` returned: ``cached`` when it was there already; ``seconds`` spent getting it."""

    plan: VenvPlan
    seconds: float
    cached: bool


def envs_root() -> Path:
    """The folder holding every env: ``$ORCHESTRATOR_ENVS_DIR`` or ``~/.cache/orchestrator/envs``."""
    configured = os.environ.get(ENVS_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else Path.home() / ".cache" / "orchestrator" / "envs"


def env_key(packages: Iterable[str]) -> str:
    """12 hex digits naming what goes into an env: its requirement lines, our Python, our Ray, our own needs."""
    import ray  # the server side builds envs: the client install has no Ray

    inputs = {
        "layout": LAYOUT,
        "requirements": list(packages),
        "python": sys.version,
        "interpreter": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "machine": platform.machine(),
        "ray": ray.__version__,
        "orchestrator": list(ACTOR_REQUIREMENTS),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def plan(cfg: Config, pool: str, root: Path | None = None) -> VenvPlan | None:
    """The env of ``pool`` (whatever its env_manager), or None when its env folder lists no requirements."""
    if pool not in cfg.pools:
        raise InvalidConfig(f"no pool {pool!r} in the config (pools: {', '.join(sorted(cfg.pools)) or 'none'})")
    env_dir = cfg.env_dir(pool)
    packages = tuple(requirements(env_dir))
    if env_dir is None or not packages:
        return None
    key = env_key(packages)
    return VenvPlan(pool, env_dir / "requirements.txt", packages, key, (root or envs_root()) / f"{pool}-{key}")


def venv_pools(cfg: Config) -> list[str]:
    """The pools whose env the orchestrator builds: ``env_manager: venv``, no ``py_executable``, requirements."""
    return [
        name
        for name, spec in cfg.pools.items()
        if spec.env_manager == "venv" and spec.py_executable is None and requirements(cfg.env_dir(name))
    ]


def ensure_envs(
    cfg: Config, on_progress: Progress | None = None, pools: Iterable[str] | None = None
) -> tuple[Config, list[BuiltEnv]]:
    """Build each missing env of ``pools`` (default: ``venv_pools``), one after another.

    Returns a copy of ``cfg`` in which each of those pools runs in its env (``py_executable`` set), and what was
    built or found. The first failure raises InvalidConfig naming the pool and its env file.
    """
    names = venv_pools(cfg) if pools is None else list(pools)
    done = []
    for name in names:
        target = plan(cfg, name)
        if target is None:
            raise InvalidConfig(f"pool {name!r} has no requirements to build an env from: it runs in our own env")
        done.append(ensure(target, on_progress))
    if not done:
        return cfg, done
    updated = cfg.model_copy(deep=True)
    for built in done:
        updated.pools[built.plan.pool].py_executable = str(built.plan.python)
    return updated, done


def ensure(target: VenvPlan, on_progress: Progress | None = None) -> BuiltEnv:
    """The env of ``target``, built unless complete; a half-built one is removed first. Raises InvalidConfig."""
    emit = on_progress or (lambda _: None)
    began = time.monotonic()
    if target.built():  # the common case: no lock to take
        emit(EnvProgress(target.pool, "cached", str(target.path)))
        return BuiltEnv(target, time.monotonic() - began, cached=True)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.path.with_name(target.path.name + ".lock")):
        if target.built():  # another process built it while we waited
            emit(EnvProgress(target.pool, "cached", str(target.path)))
            return BuiltEnv(target, time.monotonic() - began, cached=True)
        try:
            installer = _build(target, emit)
        except BaseException:
            shutil.rmtree(target.path, ignore_errors=True)  # nothing half-built stays, marked or not
            raise
    seconds = time.monotonic() - began
    emit(EnvProgress(target.pool, "built", f"{target.path} in {seconds:.1f}s with {installer}"))
    return BuiltEnv(target, seconds, cached=False)


def _build(target: VenvPlan, emit: Progress) -> str:
    """Create the env at ``target.path``, install into it, check it, then write the marker; the installer's name."""
    import ray

    shutil.rmtree(target.path, ignore_errors=True)
    uv = _find_uv()
    installer = "uv" if uv else "pip"
    emit(EnvProgress(target.pool, "building", f"{target.path} with {installer} from {target.env_file}"))
    wanted = ["-r", str(target.env_file), f"ray[default]=={ray.__version__}", *ACTOR_REQUIREMENTS]
    python = str(target.python)
    if uv:
        install = [uv, "pip", "install", "--python", python, "--link-mode", "hardlink", "--compile-bytecode"]
        steps = [[uv, "venv", "--python", sys.executable, str(target.path)], [*install, *_pip_sources(), *wanted]]
    else:
        steps = [
            [sys.executable, "-m", "venv", str(target.path)],
            [python, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check", *wanted],
        ]
    for command in steps:
        _run(command, target, emit, cwd=target.env_file.parent)
    check_py_executable(python, target.pool)  # the env answers with our Python and Ray, or is not marked
    record = {
        "pool": target.pool,
        "key": target.key,
        "env_file": str(target.env_file),
        "requirements": list(target.packages),
        "installer": installer,
        "python": sys.version.split()[0],
        "ray": ray.__version__,
        "built_at": time.time(),
    }
    partial = target.marker.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=1))
    partial.rename(target.marker)  # atomic: the marker is there whole or not at all
    return installer


def _run(command: list[str], target: VenvPlan, emit: Progress, cwd: Path) -> None:
    """Run one installer step, each output line to ``emit``; a failure raises InvalidConfig with its key line."""
    lines: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)  # ours is not the env being built
    try:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        raise _build_error(target, f"cannot run {command[0]}: {exc}", []) from None
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip()
        lines.append(line)
        if line:
            emit(EnvProgress(target.pool, "output", line))
    if process.wait() != 0:
        why = key_line(lines) or f"{Path(command[0]).name} exited with {process.returncode}"
        raise _build_error(target, why, lines)


def _build_error(target: VenvPlan, why: str, lines: list[str]) -> InvalidConfig:
    return InvalidConfig(
        f"pool {target.pool!r}: env build failed for {target.env_file}: {why}",
        pool=target.pool,
        detail={"env_file": str(target.env_file), "output": "\n".join(lines[-40:])},
    )


def key_line(lines: list[str]) -> str:
    """What an installer's output says went wrong: its first error line and (uv) its last cause, in one line."""
    stripped = [line.strip() for line in lines]
    errors = [line for line in stripped if line.lower().startswith("error")]
    causes = [line for line in stripped if line.lower().startswith("cause:")]
    if not errors:
        return causes[-1] if causes else ""
    first = errors[0].split(":", 1)[1].strip() if ":" in errors[0] else errors[0]
    return f"{first}: {causes[-1].split(':', 1)[1].strip()}" if causes else first


def _find_uv() -> str | None:
    """The uv binary (the ``uv`` package's, then $PATH's), or None; ``ORCHESTRATOR_ENV_INSTALLER=pip``: None."""
    if os.environ.get(INSTALLER_ENV, "").lower() == "pip":
        return None
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv  # the `server` extra installs it

        return str(uv.find_uv_bin())
    return shutil.which("uv")


def _pip_sources() -> list[str]:
    """uv's arguments for the package sources pip is configured with (its config files and PIP_* variables),
    and pip's way of choosing among several indexes (uv's default takes a package from the first that has it).

    ``pip config list`` prints each setting once per scope (``global.``, ``user.``, ``:env:.``): find-links and
    extra indexes are gathered from every scope, the index URL taken from the most specific one.
    """
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # no pip here: uv's own configuration decides
    values: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        option = name.rpartition(".")[2]
        if option in values:
            values[option].append(value.strip().strip("'\""))
    args: list[str] = []
    if values["index-url"]:
        args += ["--index-url", values["index-url"][-1]]  # listed global, user, site, then :env: (most specific)
    for option in ("extra-index-url", "find-links"):
        for url in dict.fromkeys(url for value in values[option] for url in value.split()):
            args += [f"--{option}", url]
    if values["extra-index-url"] and "UV_INDEX_STRATEGY" not in os.environ:
        args += ["--index-strategy", "unsafe-best-match"]  # pip's way: the best version from any of its indexes
    return args


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), released when the block or the process ends."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def disk_usage(paths: Iterable[Path], seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk under ``paths``, as ``du -s`` counts them: each inode once (hard links too), whole blocks.

    Pass the same ``seen`` to several calls to count what they share once in their total.
    """
    seen = set() if seen is None else seen
    total = 0
    for top in paths:
        entries = [str(top)] + [os.path.join(f, n) for f, dirs, files in os.walk(top) for n in [*dirs, *files]]
        for entry in entries:
            with contextlib.suppress(OSError):  # gone meanwhile
                info = os.lstat(entry)
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


def list_envs(root: Path | None = None) -> list[dict[str, Any]]:
    """Every env folder under ``root``: name, path, pool and key (from its marker), whether it is complete."""
    folder = root or envs_root()
    found = []
    for path in sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []:
        record: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((path / MARKER).read_text())
        found.append(
            {
                "name": path.name,
                "path": path,
                "pool": record.get("pool", path.name.rpartition("-")[0]),
                "key": record.get("key", path.name.rpartition("-")[2]),
                "built": bool(record),
                "built_at": record.get("built_at"),
                "installer": record.get("installer"),
            }
        )
    return found
