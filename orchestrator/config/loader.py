"""Reading pools.yaml: ``${VAR}`` / ``${VAR:-default}`` interpolation, validation, path checks.

Every error names the file, the pool and the field, e.g.
``pools.yaml: pools.light.size.min: must be >= 0, got -1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.schema import Config
from orchestrator.errors import InvalidConfig

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, where: str, source: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{where}.{i}", source) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise InvalidConfig(f"{source}: {where}: environment variable {name} is not set and has no default")

    replaced = _VAR_RE.sub(substitute, value)
    # A whole-value reference may stand for a number or bool: let YAML type it.
    return yaml.safe_load(replaced) if _VAR_RE.fullmatch(value) and replaced else replaced


SECRET_FIELDS = {("gateway", "token"), ("gateway", "tokens")}


def _describe(error: Any) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {value!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if tuple(error.get("loc", ()))[:2] in SECRET_FIELDS:
        return message  # never echo a token into logs
    return message if "got" in message else f"{message}, got {value!r}"


def _check_paths(config: Config, source: str) -> None:
    for name, pool in config.pools.items():
        if pool.env is not None:
            folder = config.env_dir(name)
            assert folder is not None
            if not folder.is_dir():
                raise InvalidConfig(f"{source}: pools.{name}.env: folder {folder} does not exist", pool=name)
            if not (folder / "requirements.txt").is_file():
                raise InvalidConfig(f"{source}: pools.{name}.env: {folder} has no requirements.txt", pool=name)
        if pool.py_executable is not None and not Path(pool.py_executable).is_file():
            raise InvalidConfig(f"{source}: pools.{name}.py_executable: {pool.py_executable} does not exist", pool=name)


def parse_config(data: Any, source: str = "pools.yaml", base_dir: str | Path = ".") -> Config:
    """Validate an already-parsed mapping; errors name ``source`` and the field path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidConfig(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = _interpolate(dict(data), "", source)
    data["base_dir"] = str(base_dir)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        pool = None
        for error in exc.errors():
            loc = ".".join(str(part) for part in error["loc"])
            if len(error["loc"]) > 1 and error["loc"][0] == "pools":
                pool = str(error["loc"][1])
            lines.append(f"{source}: {loc}: {_describe(error)}")
        raise InvalidConfig("; ".join(lines), pool=pool, detail=[line for line in lines]) from None
    _check_paths(config, source)
    return config


def load_config(path: str | Path = "pools.yaml") -> Config:
    """Read, interpolate and validate a pools.yaml file."""
    path = Path(path)
    if not path.is_file():
        raise InvalidConfig(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{path.name}: not valid YAML: {exc}") from None
    return parse_config(data, source=path.name, base_dir=path.parent.resolve())
