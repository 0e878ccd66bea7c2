"""Per-pool environments: ``envs/<pool>/requirements.txt`` -> a Ray runtime_env.

Ray builds the env once per node and caches it; pools with an empty
requirements file run in the orchestrator's own environment.
"""

from __future__ import annotations

import subprocess
import sys
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


def runtime_env(spec: Pool, env_dir: Path | None, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The Ray runtime_env for one pool's actors (``env_vars``: the orchestrator's own, beside the pool's)."""
    env: dict[str, Any] = {}
    if spec.env_vars or env_vars:
        env["env_vars"] = {**dict(spec.env_vars or {}), **(env_vars or {})}
    if spec.py_executable:
        env["py_executable"] = spec.py_executable
        return env
    packages = requirements(env_dir) if spec.env_manager != "none" else []
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
