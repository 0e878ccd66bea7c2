"""``start()``: bring up Ray (or join it), the coordinator and every pool; returns the in-process handle."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray

from orchestrator.config import Config, load_config
from orchestrator.config.envs import check_py_executable, code_modules, requirements
from orchestrator.config.venvs import EnvProgress, ensure_envs
from orchestrator.contract import load_worker_class
from orchestrator.control.coordinator import coordinator_class
from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.router import unwrap
from orchestrator.errors import InvalidConfig
from orchestrator.types import COORDINATOR_NAME, Failure


def start(
    config: str | Path | Config = "pools.yaml",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_env_progress: Callable[[EnvProgress], None] | None = None,
    **ray_init: Any,
) -> Orchestrator:
    """Start Ray (embedded unless ``ray.address`` is set), the coordinator and every pool.

    Returns once each actor is ready or pending for resources. A bad pool
    (unimportable worker, bad options, failing constructor, env build error)
    raises InvalidConfig naming the pool, and nothing is left running.
    ``on_progress`` gets the pools' status about twice a second while they start. First, each
    ``env_manager: venv`` pool's env is built if missing (``on_env_progress`` gets each step; see
    ``config.venvs``), and the pool runs in it.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    code_modules([], cfg.base_dir, cfg.code)  # a code: package that is not there fails here, naming it
    for name, pool in cfg.pools.items():
        if pool.py_executable is not None:
            check_py_executable(pool.py_executable, name)
        elif pool.env_manager != "none" and not requirements(cfg.env_dir(name)):
            with _importable_from(cfg.base_dir):  # where the shipped code is found (config.envs.code_modules)
                load_worker_class(pool.worker, name, pool.options)  # same env as ours: fail fast
    cfg, _ = ensure_envs(cfg, on_env_progress)  # the coordinator keeps this config (py_executable set) for good
    owns_ray = not ray.is_initialized()
    if owns_ray:
        kwargs: dict[str, Any] = {"namespace": cfg.ray.namespace, "log_to_driver": True}
        if cfg.ray.address:
            kwargs["address"] = cfg.ray.address
        else:
            kwargs.update(dashboard_host=cfg.ray.dashboard_host, include_dashboard=True)
            if cfg.ray.num_cpus is not None:
                kwargs["num_cpus"] = cfg.ray.num_cpus
            if cfg.ray.num_gpus is not None:
                kwargs["num_gpus"] = cfg.ray.num_gpus
        ray.init(**{**kwargs, **ray_init})
    try:
        coordinator = (
            coordinator_class()
            .options(name=COORDINATOR_NAME, namespace=cfg.ray.namespace, lifetime="detached")
            .remote(cfg.model_dump())
        )
    except ValueError:  # the name is taken
        if owns_ray:
            ray.shutdown()
        raise InvalidConfig(
            f"an orchestrator is already running in Ray namespace {cfg.ray.namespace!r}: "
            "connect() to it, or stop it first (orchestrator down)"
        ) from None
    applying = coordinator.apply.remote()
    while on_progress is not None and not ray.wait([applying], timeout=0.5)[0]:
        on_progress(ray.get(coordinator.status.remote()))
    outcome = ray.get(applying)
    if isinstance(outcome, Failure):
        ray.get(coordinator.shutdown.remote(0.0))
        ray.kill(coordinator)
        if owns_ray:
            ray.shutdown()
        unwrap(outcome)
    return Orchestrator(coordinator, cfg.ray.namespace, owns_ray=owns_ray)


@contextlib.contextmanager
def _importable_from(folder: str) -> Iterator[None]:
    """Import with pools.yaml's folder first on the path, as the code shipped to the actors is looked up."""
    path = str(Path(folder).resolve())
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)
