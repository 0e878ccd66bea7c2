"""Per-pool virtualenvs (``env_manager: venv``): what building them costs, and what running in them costs at start.

Run from the repository root (with the project's venv active, uv installed: the `server` extra):

    python bench/envs.py                 # ~9 min on 2 cores, writes bench/results/envs.json
    python bench/envs.py --repeats 1     # a smoke run
    python bench/envs.py --no-uv-cold    # skip the builds from an empty uv cache (their downloads)

For the shipped product pools (``light``, ``retrieval``, ``heavy`` of pools.yaml):

- cold build: ``config.venvs.ensure`` of each pool's env into an empty env folder (a fresh
  ``ORCHESTRATOR_ENVS_DIR``), timed alone, two ways: uv's cache warm (the usual case after the first
  env: uv hard-links what it has, so torch costs nearly nothing) and uv's cache cold (a fresh
  ``UV_CACHE_DIR`` per env: every wheel fetched and unpacked. Here the sources are pip's, passed on
  to uv: torch's CPU wheel from /opt/wheels and the local indexes on this disk, the rest from PyPI
  over the network). Both include compiling the env's bytecode (most of the time with uv's cache
  warm; without it, an actor would compile torch at every start where PYTHONDONTWRITEBYTECODE is
  set, as on this machine: 1.8x the shared env's start). Sizes are ``du -s`` of the env (files
  hard-linked from uv's cache included).
- cached: ``ensure`` of a built env (what ``up`` pays per venv pool once its env exists).
- warm start: ``orchestrator.start()`` of the three pools (each one actor, pools.yaml's settings)
  until every actor is ready, on one local Ray started beforehand (4 logical CPUs; Ray's own boot
  is not timed), envs built: ``env_manager: venv`` (each pool in its env) vs ``env_manager: none``
  (all in this venv, the shared env). The sides take turns, order swapped each round, after an
  untimed warm-up of each; medians of ``--repeats``. Each venv round checks that every actor has
  its env's files mapped (``/proc/PID/maps``) and each shared round that none has. Ratio venv /
  shared; goal <= 1.2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/envs.py`: bench.common must import

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from orchestrator.config import Config, load_config  # noqa: E402
from orchestrator.config.venvs import ENVS_DIR_ENV, VenvPlan, disk_usage, ensure, plan  # noqa: E402

POOLS = ("light", "retrieval", "heavy")
GOAL = 1.2


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (the builder reads them)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def product_config(manager: str, namespace: str, state_dir: Path) -> Config:
    """pools.yaml's product pools, each with ``env_manager`` = ``manager``."""
    config = load_config(ROOT / "pools.yaml")
    config.pools = {name: config.pools[name] for name in POOLS}
    for spec in config.pools.values():
        spec.env_manager = manager  # type: ignore[assignment]
    config.ray.namespace, config.state_dir = namespace, str(state_dir)
    return config


def cold_build(name: str, work: Path, uv_cache: Path | None) -> dict[str, Any]:
    """Build ``name``'s env into an empty env folder (and, given ``uv_cache``, an empty uv cache); its numbers."""
    envs = work / f"envs-{uuid.uuid4().hex[:6]}"
    extra = {"UV_CACHE_DIR": str(uv_cache)} if uv_cache else {}
    with environ(**{ENVS_DIR_ENV: str(envs)}, **extra):
        target = plan(load_config(ROOT / "pools.yaml"), name)
        assert target is not None, name
        built = ensure(target)
        cached = ensure(target)
    assert not built.cached and cached.cached
    numbers = {"seconds": built.seconds, "size_bytes": disk_usage([target.path]), "cached_ensure_s": cached.seconds}
    shutil.rmtree(envs)
    if uv_cache:
        shutil.rmtree(uv_cache, ignore_errors=True)
    return numbers


def env_paths_mapped(orch: orchestrator.Orchestrator, targets: dict[str, VenvPlan]) -> dict[str, bool]:
    """Per pool: whether its actor's process has files of the pool's env mapped (torch and the rest)."""
    found = {}
    for name, target in targets.items():
        pid = orch.status()[name]["actors"][0]["pid"]
        found[name] = str(target.path) in Path(f"/proc/{pid}/maps").read_text()
    return found


def timed_start(manager: str, work: Path, targets: dict[str, VenvPlan]) -> float:
    """Seconds ``orchestrator.start()`` takes to bring the three pools up with ``manager``; then shut them down."""
    config = product_config(manager, f"bench-envs-{uuid.uuid4().hex[:8]}", work / f"state-{uuid.uuid4().hex[:6]}")
    began = time.perf_counter()
    orch = orchestrator.start(config)
    seconds = time.perf_counter() - began
    try:
        states = {name: [a["state"] for a in pool["actors"]] for name, pool in orch.status().items()}
        assert all(s == ["ready"] for s in states.values()), states
        mapped = env_paths_mapped(orch, targets)
        assert all(mapped.values()) if manager == "venv" else not any(mapped.values()), (manager, mapped)
    finally:
        orch.shutdown(drain_s=1.0)
    return seconds


def show(report: dict[str, Any], console: Console) -> None:
    table = Table(title="per-pool virtualenvs: build and start (2 cores; start: Ray already up)")
    for column in ("measure", "light", "retrieval", "heavy", "note"):
        table.add_column(column, justify="left" if column in ("measure", "note") else "right")
    for key, label in (("uv_warm", "cold build, uv cache warm"), ("uv_cold", "cold build, uv cache cold")):
        builds = report["builds"].get(key)
        if builds:
            table.add_row(label, *(f"{builds[p]['seconds']:.1f} s" for p in POOLS), "empty env folder")
    warm = report["builds"]["uv_warm"]
    table.add_row("env size (du -s)", *(f"{warm[p]['size_bytes'] / 1024**3:.2f} GiB" for p in POOLS), "")
    table.add_row("cached ensure", *(f"{warm[p]['cached_ensure_s'] * 1000:.1f} ms" for p in POOLS), "per up")
    console.print(table)
    start = report["start"]
    verdict = "[green]meets goal[/]" if start["meets"] else "[red]misses goal[/]"
    table = Table(title="warm start of light + retrieval + heavy (one actor each), median of repeats")
    for column in ("env_manager venv", "env_manager none (shared)", "ratio", "goal", "verdict"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{start['venv_median_s']:.2f} s",
        f"{start['none_median_s']:.2f} s",
        f"{start['ratio']:.2f}",
        f"<= {GOAL}",
        verdict,
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed starts per side (medians are reported)")
    parser.add_argument("--no-uv-cold", action="store_true", help="skip the builds from an empty uv cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "envs.json")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)
    load_before = os.getloadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="envs-bench-", dir=Path.home() / ".cache") as tmp:
        work = Path(tmp)  # beside uv's cache (~/.cache/uv): one filesystem, so uv hard-links
        builds: dict[str, dict[str, Any]] = {"uv_warm": {}}
        for name in POOLS:  # one untimed build of each first: uv's cache holds every wheel after it
            with environ(**{ENVS_DIR_ENV: str(work / "prime")}):
                ensure(plan(load_config(ROOT / "pools.yaml"), name))  # type: ignore[arg-type]
        for name in POOLS:
            builds["uv_warm"][name] = cold_build(name, work, None)
            console.print(f"cold build {name} (uv cache warm): {builds['uv_warm'][name]['seconds']:.1f} s")
        if not args.no_uv_cold:
            builds["uv_cold"] = {}
            for name in POOLS:
                builds["uv_cold"][name] = cold_build(name, work, work / f"uv-cache-{name}")
                console.print(f"cold build {name} (uv cache cold): {builds['uv_cold'][name]['seconds']:.1f} s")
        with environ(**{ENVS_DIR_ENV: str(work / "prime")}):
            targets = {name: plan(product_config("venv", "x", work), name) for name in POOLS}
            assert all(t is not None and t.built() for t in targets.values())
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="bench-envs")
            try:
                for manager in ("venv", "none"):  # warm-up: imports, page cache
                    timed_start(manager, work, targets)  # type: ignore[arg-type]
                samples: dict[str, list[float]] = {"venv": [], "none": []}
                for round_ in range(args.repeats):
                    for manager in ("venv", "none") if round_ % 2 == 0 else ("none", "venv"):
                        samples[manager].append(timed_start(manager, work, targets))  # type: ignore[arg-type]
                        console.print(f"start {manager}: {samples[manager][-1]:.2f} s")
            finally:
                ray.shutdown()
    venv_s, none_s = statistics.median(samples["venv"]), statistics.median(samples["none"])
    report: dict[str, Any] = {
        "benchmark": "envs",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repeats": args.repeats,
        "duration_s": time.perf_counter() - began,
        "machine": machine(ray_num_cpus=4, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "pools": "pools.yaml's light, retrieval and heavy, one actor each, as shipped but for env_manager",
        "builds": builds,
        "build_notes": "uv_warm: an empty env folder, uv's cache holding every wheel (primed by one untimed build "
        "of each); uv_cold: also a fresh UV_CACHE_DIR per env (torch from /opt/wheels and the local indexes on "
        "this disk, the rest from PyPI over the network)",
        "start": {
            "venv_s": samples["venv"],
            "none_s": samples["none"],
            "venv_median_s": venv_s,
            "none_median_s": none_s,
            "ratio": venv_s / none_s,
            "meets": venv_s / none_s <= GOAL,
            "anchor": "env_manager none: the same pools in this venv (the shared env)",
        },
        "goals": {"start_ratio_max": GOAL},
    }
    show(report, console)
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
