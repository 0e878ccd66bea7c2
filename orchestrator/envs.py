"""Per-pool environments: ``envs/<pool>/requirements.txt`` -> a Ray runtime_env.

Ray builds the env once per node and caches it; pools with an empty
requirements file run in the orchestrator's own environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.config import Pool


def requirements(env_dir: Path | None) -> list[str]:
    """The requirement lines of a pool's env folder (comments and blanks dropped)."""
    if env_dir is None or not (env_dir / "requirements.txt").is_file():
        return []
    lines = (env_dir / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def runtime_env(spec: Pool, env_dir: Path | None) -> dict[str, Any]:
    """The Ray runtime_env for one pool's actors."""
    env: dict[str, Any] = {}
    if spec.env_vars:
        env["env_vars"] = dict(spec.env_vars)
    if spec.py_executable:
        env["py_executable"] = spec.py_executable
        return env
    packages = requirements(env_dir)
    if packages:
        env[spec.env_manager] = {"packages": packages}
        if spec.env_manager == "pip":
            env["pip"]["pip_check"] = False
    return env
