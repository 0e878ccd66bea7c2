"""Paths a client names, confined under a root the operator configured.

An op that takes a path from a request (save an index, load an adapter)
resolves it with :func:`confined_path`: the path must be relative, every
component visible (no ``.x``), no ``..``, and what it names after following
symlinks must still lie under the root. Anything else is ``invalid_arguments``
naming the field, before the op touches the file system.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from orchestrator.errors import InvalidArguments

STATE_DIR_ENV = "ORCHESTRATOR_STATE_DIR"  # set in every pool actor's environment by the supervisor
CODE_ENV = "ORCHESTRATOR_CODE"  # likewise: pools.yaml's code: packages, comma-separated
FINE_TUNED = "fine-tuned/"  # an adapter path under state_dir/adapters, where fine-tuning jobs save them
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][\w.:-]{0,127}", re.ASCII)  # an adapter, served as model <pool>/<name>


def state_dir() -> Path:
    """The orchestrator's ``state_dir`` as a pool actor sees it (on a cluster: shared storage, mounted alike)."""
    return Path(os.environ.get(STATE_DIR_ENV, ".orchestrator")).expanduser().resolve()


def deployed_packages() -> frozenset[str]:
    """The top-level packages of the operator's own code (pools.yaml's ``code:``) as a pool actor sees them."""
    return frozenset(name for name in os.environ.get(CODE_ENV, "").split(",") if name)


def confined_path(root: str | Path, path: str, field: str = "path", op: str | None = None) -> Path:
    """``path`` resolved under ``root`` (which need not exist yet); refuses escapes, naming ``field``."""

    def refuse(message: str) -> InvalidArguments:
        return InvalidArguments(f"{field}: {message}", op=op, detail=[{"field": field, "message": message}])

    if not isinstance(path, str) or not path.strip():
        raise refuse("must be a non-empty relative path")
    if "\x00" in path:
        raise refuse("must not contain a NUL byte")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or path.startswith("~"):
        raise refuse(f"must be relative to the configured folder, got the absolute path {path!r}")
    parts = PurePosixPath(path.replace("\\", "/")).parts
    for part in parts:
        if part == "..":
            raise refuse(f"must not contain '..' ({path!r})")
        if part.startswith("."):
            raise refuse(f"must not name a hidden entry ({part!r} in {path!r})")
    base = Path(root).expanduser().resolve()
    try:
        resolved = base.joinpath(*parts).resolve()  # follows symlinks, existing or not
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        raise refuse(f"{path!r} cannot be resolved (a symlink loop?)") from None
    if resolved == base or not resolved.is_relative_to(base):
        raise refuse(f"{path!r} leads outside the configured folder")
    return resolved
