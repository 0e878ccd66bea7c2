"""The pools.yaml schema: pydantic v2 models, one per section, every field described.

``extra="forbid"`` everywhere, so a misspelt field is an error that names it
(the loader turns pydantic's errors into ``pools.yaml: pools.light.size.min: ...``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
T = TypeVar("T")
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def parse_bytes(value: Any) -> int:
    """``"2GiB"`` -> 2147483648; ints pass through. Raises ValueError naming the unit."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 512MiB or 2GiB, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 512MiB or 2GiB, got {value!r}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {unit!r} (use B, KB, MB, GB, KiB, MiB, GiB, TiB), got {value!r}")
    return int(float(number) * factor)


def _names(value: dict[str, T], pattern: str, what: str, allowed: str) -> dict[str, T]:
    """``value`` unchanged when every key matches ``pattern``; else a ValueError naming the key."""
    for name in value:
        if not re.match(pattern, name):
            raise ValueError(f"{what} name {name!r} must be {allowed}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Size(_Model):
    """How many actors the pool runs."""

    min: int = Field(1, ge=0, description="Actors started with the pool and kept alive.")
    max: int | None = Field(
        None, ge=0, description="Upper bound (defaults to min): above min, the pool autoscales (see `autoscale`)."
    )

    @model_validator(mode="after")
    def _max_not_below_min(self) -> Size:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Autoscale(_Model):
    """How a pool with ``size.max`` above ``size.min`` grows and shrinks.

    Load is the pool's outstanding work per ready actor: the calls its actors run (their last
    health ping) plus its queued jobs.
    """

    target: float | None = Field(
        None,
        gt=0,
        description="Load per actor at or above which the pool adds an actor (default: limits.concurrency, "
        "i.e. every actor busy).",
    )
    up_after_s: float = Field(5.0, ge=0, description="Load at or above target this long adds one actor.")
    down_after_s: float = Field(
        60.0,
        ge=0,
        description="Cool-down: load that one actor fewer would carry at half the target, this long, removes "
        "the newest actor (never below min, never one holding a session or running a job).",
    )


class Resources(_Model):
    """Ray resources each actor of the pool asks for (scheduling only)."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor; fractional allowed.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional allowed (e.g. 0.5).")
    memory: int | None = Field(None, description="Ray memory resource per actor, e.g. 2GiB.")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per actor.")

    _bytes = field_validator("memory", mode="before")(lambda v: None if v is None else parse_bytes(v))


class Limits(_Model):
    """Limits each actor enforces on itself."""

    max_memory: int | None = Field(
        None, description="Recycle the actor after the current call past this RSS (e.g. 4GiB)."
    )
    max_calls: int | None = Field(None, ge=1, description="Recycle the actor after this many calls.")
    call_timeout_s: float | None = Field(None, gt=0, description="A call running longer gets `timeout`.")
    concurrency: int = Field(1, ge=1, description="Ops one actor runs at once.")
    queue: int = Field(
        64, ge=0, description="Calls waiting per pool (per caller) beyond the running ones; past it, `overloaded`."
    )
    stream_buffer: int = Field(
        256, ge=1, description="Stream events an op may run ahead of a slow consumer (backpressure)."
    )

    _bytes = field_validator("max_memory", mode="before")(lambda v: None if v is None else parse_bytes(v))


class Restart(_Model):
    """Restart intensity (OTP style): more than max_restarts in within_s fails the pool."""

    max_restarts: int = Field(5, ge=0, description="Restarts allowed within the window.")
    within_s: float = Field(60.0, gt=0, description="The window, in seconds.")
    retry_after_s: float | None = Field(
        None,
        gt=0,
        description="A failed pool starts again by itself after this long, doubling after each try (at most "
        "10 min); null: it stays failed until `orchestrator pools restart`.",
    )


class Health(_Model):
    """The health ping the coordinator sends each actor."""

    period_s: float = Field(2.0, gt=0, description="Seconds between pings.")
    timeout_s: float = Field(
        10.0, gt=0, description="A ping unanswered this long marks the actor hung; it is replaced."
    )


class Sessions(_Model):
    """Stateful sessions pinned to one actor."""

    per_worker: int = Field(
        0, ge=0, description="Sessions one actor holds at most (0 = no limit; 1 = a session owns its actor)."
    )
    idle_timeout_s: float | None = Field(None, gt=0, description="Close a session unused this long.")
    ttl_s: float | None = Field(None, gt=0, description="Close a session this long after it opened.")
    max_open: int = Field(
        1000, ge=1, description="Open sessions the pool holds at most (all actors together); past it, `overloaded`."
    )
    checkpoint: Literal["after_call", "explicit", "never"] = Field(
        "explicit", description="When session state is saved for restore after a crash."
    )


class Pool(_Model):
    """One named pool of WorkerHost actors."""

    worker: str = Field(description='The worker class, "pkg.module:Class".')
    env: str | None = Field(None, description="Folder holding requirements.txt (default envs/<pool> when it exists).")
    env_manager: Literal["venv", "pip", "uv", "none"] = Field(
        "venv",
        description="venv: the orchestrator builds the pool's own virtualenv from env (cached; see "
        "`orchestrator envs build`; on a multi-node cluster ORCHESTRATOR_ENVS_DIR must be a folder every node "
        "shares); pip or uv: Ray builds it on each node; none: the pool runs in the orchestrator's own env. "
        "An env without requirement lines is the orchestrator's own env too.",
    )
    py_executable: str | None = Field(None, description="A prebuilt virtualenv's python, instead of env.")
    size: Size = Field(default_factory=Size, description="Actor count (an int is min = max).")
    autoscale: Autoscale = Field(default_factory=Autoscale, description="Scaling within size.min..size.max.")
    resources: Resources = Field(default_factory=Resources, description="Per-actor Ray resources.")
    limits: Limits = Field(default_factory=Limits, description="Per-actor limits.")
    restart: Restart = Field(default_factory=Restart, description="Restart intensity.")
    health: Health = Field(default_factory=Health, description="Health ping.")
    sessions: Sessions = Field(default_factory=Sessions, description="Session policy.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the worker's constructor.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in the pool's actors."
    )

    @field_validator("worker")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not _ENTRY_RE.match(value):
            raise ValueError(f'must look like "pkg.module:Class", got {value!r}')
        return value

    @field_validator("env_vars", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        # Environment values are strings; `${VAR:-1}` or a bare `1` in YAML must not fail as a number.
        if isinstance(value, dict):
            return {
                k: v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in value.items()
            }
        return value

    @field_validator("size", mode="before")
    @classmethod
    def _int_size(cls, value: Any) -> Any:
        return {"min": value, "max": value} if isinstance(value, int) and not isinstance(value, bool) else value


class GatewayOptions(_Model):
    """The HTTP gateway, and what it refuses before any route runs."""

    host: str = Field("127.0.0.1", description="Bind address; anything but loopback requires a token.")
    port: int = Field(8000, ge=0, le=65535, description="Port (0 picks a free one).")
    token: str | None = Field(None, description="A bearer token every route but /healthz accepts (named `default`).")
    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="More bearer tokens by name (e.g. one per team or a new one while rotating); empty values "
        "are ignored. Any configured token opens every route; SIGHUP re-reads them without a restart.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names served besides loopback and the bound address (`*.example.com` "
        "matches subdomains, `*` anything); others get 421, which stops DNS rebinding.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (e.g. https://app.example.com) allowed to call the API cross-origin; a request "
        "from any other origin gets 403. Admin routes stay same-origin only.",
    )
    max_body: int = Field(16 * 1024**2, ge=1, description="Request body limit, e.g. 16MiB; larger bodies get 413.")
    max_json_depth: int = Field(64, ge=2, le=512, description="JSON nesting limit of a request body; deeper gets 422.")

    _bytes = field_validator("max_body", mode="before")(lambda v: parse_bytes(v))
    _empty_is_none = field_validator("token", mode="before")(lambda v: v or None)

    @field_validator("tokens", mode="before")
    @classmethod
    def _drop_empty(cls, value: Any) -> Any:
        # `alice: ${ALICE_TOKEN:-}` with the variable unset is no token, not an empty one everyone knows.
        return {k: v for k, v in value.items() if v} if isinstance(value, dict) else value

    @field_validator("tokens")
    @classmethod
    def _token_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _names(value, r"^[A-Za-z0-9][\w.-]{0,63}$", "token", "letters, digits, '_', '-' or '.'")

    def credentials(self) -> dict[str, str]:
        """Every configured token by name (``token`` is ``default``)."""
        return {**({"default": self.token} if self.token else {}), **self.tokens}


class JobOptions(_Model):
    """Long-running jobs."""

    max_retries: int = Field(3, ge=0, description="Re-runs (from the last checkpoint) after the job's actor dies.")
    max_retries_limit: int = Field(
        10, ge=0, description="The most re-runs one job may ask for (`max_retries` on submit); more is a 422."
    )
    batch_limit: int = Field(
        10_000, ge=1, description="The most jobs one submit may queue together (`submit_many`, POST /v1/jobs/batch)."
    )
    cancel_grace_s: float = Field(
        10.0, ge=0, description="After a cancel, how long the op may take to stop before its actor is killed."
    )
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="Finished jobs (and their events) older than this are deleted."
    )


class FileOptions(_Model):
    """Files uploaded through the OpenAI Files API (``POST /v1/files``), kept in ``state_dir/files``."""

    max_bytes: int = Field(
        512 * 1024**2,
        ge=1,
        description="Largest file one upload may store, e.g. 512MiB; larger gets 413. The gateway accepts "
        "multipart bodies up to this plus a little for the form's envelope on POST /v1/files only "
        "(gateway.max_body still bounds every other route).",
    )

    _bytes = field_validator("max_bytes", mode="before")(lambda v: parse_bytes(v))


class RayOptions(_Model):
    """How the orchestrator reaches Ray."""

    address: str | None = Field(None, description="Cluster address; none starts an embedded local Ray.")
    namespace: str = Field("orchestrator", description="Ray namespace holding the coordinator and pool actors.")
    dashboard_host: str = Field("127.0.0.1", description="Where the embedded Ray dashboard listens.")
    num_cpus: float | None = Field(None, ge=0, description="Embedded Ray only: logical CPUs (default: the machine's).")
    num_gpus: float | None = Field(None, ge=0, description="Embedded Ray only: logical GPUs (default: detected).")
    ship_code: bool = Field(
        True,
        description="Ship the orchestrator package and each pool's worker package to the nodes through the "
        "runtime_env's py_modules (worker nodes then need only Python and Ray); false: nodes import them from "
        "their own installs.",
    )

    _empty_is_none = field_validator("address", mode="before")(lambda v: v or None)


class Config(_Model):
    """The whole of pools.yaml."""

    ray: RayOptions = Field(default_factory=RayOptions, description="Ray connection.")
    state_dir: str = Field(".orchestrator", description="Where the durable store lives (SQLite, checkpoints).")
    start_timeout_s: float = Field(600.0, gt=0, description="How long start-up waits for actors (env builds included).")
    debug: bool = Field(False, description="Include tracebacks in op_failed errors.")
    gateway: GatewayOptions = Field(default_factory=GatewayOptions, description="The HTTP gateway.")
    jobs: JobOptions = Field(default_factory=JobOptions, description="Long-running jobs.")
    files: FileOptions = Field(default_factory=FileOptions, description="Uploaded files (the OpenAI Files API).")
    pools: dict[str, Pool] = Field(default_factory=dict, description="The pools, by name.")
    code: list[str] = Field(
        default_factory=list,
        description="Top-level packages of your own code in pools.yaml's folder (e.g. [myapp]: DSPy programs the "
        "heavy pool optimizes by class), shipped to every node like the workers' code (ray.ship_code).",
    )
    base_dir: str = Field(".", description="Folder pools.yaml was read from (set by the loader).")

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, Pool]) -> dict[str, Pool]:
        return _names(pools, r"^[a-z][a-z0-9_-]{0,62}$", "pool", "lowercase letters, digits, '-' or '_'")

    @field_validator("code")
    @classmethod
    def _code_packages(cls, code: list[str]) -> list[str]:
        for i, name in enumerate(code):
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise ValueError(f"code.{i}: {name!r} must be a top-level package name (e.g. myapp), not a path")
        return code

    def env_dir(self, pool: str) -> Path | None:
        """The pool's env folder, resolved against pools.yaml's folder."""
        spec = self.pools[pool]
        if spec.env is not None:
            return Path(self.base_dir, spec.env).resolve()
        default = Path(self.base_dir, "envs", pool)
        return default.resolve() if default.is_dir() else None

    def state_path(self) -> Path:
        """``state_dir`` resolved against pools.yaml's folder."""
        return Path(self.base_dir, self.state_dir).resolve()
