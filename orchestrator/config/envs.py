"""Per-pool environments: ``envs/<pool>/requirements.txt`` -> a Ray runtime_env, and the code every node gets.

Ray builds the env once per node and caches it; pools with an empty
requirements file run in the orchestrator's own environment. The project's
code (the orchestrator package and each pool's worker package) travels in the
runtime_env's ``py_modules``, so a worker node needs only Python and Ray.
"""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.config.schema import Pool
from orchestrator.errors import InvalidConfig


def requirements(env_dir: Path | None) -> list[str]:
    """The requirement lines of a pool's env folder (comments and blanks dropped)."""
    if env_dir is None or not (env_dir / "requirements.txt").is_file():
        return []
    lines = (env_dir / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


# Never shipped: bytecode caches (each node compiles its own) and editors' and tools' leftovers.
CODE_EXCLUDES = ["__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache"]


def code_modules(workers: Iterable[str], base_dir: str | Path, code: Iterable[str] = ()) -> list[str]:
    """The local folders (or ``.py`` files) of the code actors import, for the runtime_env's ``py_modules``.

    The orchestrator package itself, the top-level package of each ``"pkg.module:Class"`` in
    ``workers`` and each package of ``code`` (pools.yaml's ``code:``), looked up in ``base_dir``
    (pools.yaml's folder) first, then on our own path. Code installed in a site-packages folder
    belongs to the pool's env and is not shipped; a worker that is not found here is left to the env
    (its start then fails naming the module), but a ``code`` package must be found: InvalidConfig
    naming ``code.<i>``.
    """
    found: dict[str, str] = {"orchestrator": str(Path(__file__).resolve().parent.parent)}
    search = [str(Path(base_dir).resolve()), *sys.path]
    for entry in workers:
        top = entry.partition(":")[0].split(".")[0]
        path = found.get(top) or _local_code(top, search)
        if path is not None:
            found[top] = path
    for i, top in enumerate(code):
        path = found.get(top) or _local_code(top, search)
        if path is None:
            raise InvalidConfig(f"code.{i}: no package {top!r} in {Path(base_dir).resolve()} (pools.yaml's folder)")
        found[top] = path
    return sorted(set(found.values()))


def _local_code(top: str, search: list[str]) -> str | None:
    """Where the module or package ``top`` lies on ``search``, unless it is installed (site-packages)."""
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package (namespace packages: their first folder)
        path = str(next(iter(spec.submodule_search_locations)))
    elif spec.origin and spec.origin.endswith(".py"):
        path = spec.origin
    else:
        return None  # a compiled extension: the env's business
    return None if {"site-packages", "dist-packages"} & set(Path(path).parts) else path


def runtime_env(
    spec: Pool,
    env_dir: Path | None,
    env_vars: dict[str, str] | None = None,
    py_modules: list[str] | None = None,
) -> dict[str, Any]:
    """The Ray runtime_env for one pool's actors (``env_vars``: the orchestrator's own, beside the pool's;
    ``py_modules``: the URIs of the code shipped to the nodes, see ``cluster.ship``)."""
    env: dict[str, Any] = {}
    if spec.env_vars or env_vars:
        env["env_vars"] = {**dict(spec.env_vars or {}), **(env_vars or {})}
    if py_modules:
        env["py_modules"] = list(py_modules)
    if spec.py_executable:
        env["py_executable"] = spec.py_executable
        return env
    # pip/uv: Ray builds the env on each node. (venv: start() built it and set py_executable; none: ours.)
    packages = requirements(env_dir) if spec.env_manager in ("pip", "uv") else []
    if packages:
        env[spec.env_manager] = {"packages": packages}
        if spec.env_manager == "pip":
            env["pip"]["pip_check"] = False
    return env


def check_py_executable(path: str, pool: str) -> None:
    """A prebuilt virtualenv must hold the same Python minor version and Ray version as ours."""
    import ray  # only the server side checks envs: the client installs without Ray

    probe = "import sys, ray; print(f'{sys.version_info[0]}.{sys.version_info[1]} {ray.__version__}')"
    try:
        out = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InvalidConfig(f"pools.{pool}.py_executable: {path} cannot import ray: {exc}", pool=pool) from None
    want = f"{sys.version_info[0]}.{sys.version_info[1]} {ray.__version__}"
    if out.strip() != want:
        raise InvalidConfig(
            f"pools.{pool}.py_executable: {path} has Python/Ray {out.strip()!r}, the orchestrator has {want!r}",
            pool=pool,
        )
