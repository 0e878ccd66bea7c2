"""Per-pool virtualenvs the orchestrator builds (``env_manager: venv``): real uv, a real Ray, real pools.

One small env (``tomli``, which the test venv does not have, plus Ray) is built once for the module; the
pools' workers live in a temporary folder beside it and reach the actors as shipped code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.config import Config, parse_config
from orchestrator.config.venvs import (
    ACTOR_REQUIREMENTS,
    EnvProgress,
    disk_usage,
    ensure,
    ensure_envs,
    key_line,
    plan,
)
from tests.conftest import ROOT, Start

PROBE = '''
import sys

import tomli  # only the pool's env has it

from orchestrator import Worker, op


class Probe(Worker):
    """Where the actor runs and where it imports tomli from."""

    @op
    def where(self) -> dict:
        return {"executable": sys.executable, "prefix": sys.prefix, "tomli": tomli.__file__}
'''

NEEDS_MISSING = '''
import humanize  # in no env of this test

from orchestrator import Worker, op


class Needs(Worker):
    """A worker whose module imports a package its env does not provide."""

    @op
    def noop(self) -> None:
        pass
'''


def pool(worker: str, env: str = "envs/tiny") -> dict[str, object]:
    """A one-actor venv pool with small resources."""
    return {"worker": worker, "env": env, "env_manager": "venv", "size": 1, "resources": {"num_cpus": 0.25}}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pools.yaml's folder: envs/tiny (tomli), the workers, and an env cache of its own (ORCHESTRATOR_ENVS_DIR)."""
    folder = tmp_path_factory.mktemp("venvs")
    (folder / "envs" / "tiny").mkdir(parents=True)
    (folder / "envs" / "tiny" / "requirements.txt").write_text("# the test env\ntomli\n")
    for name, source in (("envprobe", PROBE), ("needsmissing", NEEDS_MISSING)):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(source)
    (folder / "pools.yaml").write_text(
        "pools:\n  tiny: {worker: 'envprobe:Probe', env: envs/tiny, env_manager: venv, size: 1}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORCHESTRATOR_ENVS_DIR", str(folder / "cache"))
        yield folder


@pytest.fixture(scope="module")
def built(base: Path) -> list[EnvProgress]:
    """The tiny env, built once (its progress events)."""
    events: list[EnvProgress] = []
    _, done = ensure_envs(config_of(base, {"tiny": pool("envprobe:Probe")}), events.append)
    assert [b.cached for b in done] == [False]
    return events


def config_of(base: Path, pools: dict[str, object]) -> Config:
    """A config of ``pools`` read from ``base``."""
    return parse_config({"pools": pools}, base_dir=base)


def test_build_reports_progress_and_marks_the_env_complete(base: Path, built: list[EnvProgress]) -> None:
    stages = [e.stage for e in built]
    assert stages[0] == "building" and stages[-1] == "built" and "output" in stages, stages
    target = plan(config_of(base, {"tiny": pool("envprobe:Probe")}), "tiny")
    assert target is not None and target.built()
    assert target.path.parent == base / "cache" and target.path.name.startswith("tiny-")
    probe = "import tomli, ray, pydantic, psutil, yaml, httpx; print(ray.__version__)"
    import ray

    answer = subprocess.run([str(target.python), "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == ray.__version__
    assert importlib.util.find_spec("tomli") is None  # the orchestrator's own env has no tomli


def test_venv_pool_runs_in_its_built_env(start_orchestrator: Start, base: Path, built: list[EnvProgress]) -> None:
    target = plan(config_of(base, {"tiny": pool("envprobe:Probe")}), "tiny")
    assert target is not None
    orch = start_orchestrator({"tiny": pool("envprobe:Probe")}, base_dir=base)
    where = orch.call("tiny", "where")
    assert where["executable"] == str(target.python)
    assert where["prefix"] == str(target.path)
    assert where["tomli"].startswith(str(target.path) + "/")  # from the env, not from shipped code
    orch.shutdown(drain_s=1.0)


def test_second_build_is_a_cache_hit(base: Path, built: list[EnvProgress]) -> None:
    target = plan(config_of(base, {"tiny": pool("envprobe:Probe")}), "tiny")
    assert target is not None
    before = target.marker.stat()
    events: list[EnvProgress] = []
    again = ensure(target, events.append)
    assert again.cached and again.plan.path == target.path
    assert [e.stage for e in events] == ["cached"]
    after = target.marker.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rebuilt


def test_comments_keep_the_env_and_changed_requirements_make_a_new_one(base: Path, built: list[EnvProgress]) -> None:
    (base / "envs" / "commented").mkdir()
    (base / "envs" / "commented" / "requirements.txt").write_text("tomli  # a comment\n\n# another\n")
    (base / "envs" / "pinned").mkdir()
    (base / "envs" / "pinned" / "requirements.txt").write_text("tomli\nsix\n")
    config = config_of(base, {"tiny": pool("envprobe:Probe"), "c": pool("envprobe:Probe", "envs/commented")})
    first, commented = plan(config, "tiny"), plan(config, "c")
    assert first is not None and commented is not None and first.key == commented.key
    changed = plan(config_of(base, {"tiny": pool("envprobe:Probe", "envs/pinned")}), "tiny")
    assert changed is not None and changed.key != first.key and changed.path != first.path
    assert not ensure(changed).cached
    assert changed.built() and first.built()  # the old env is left as it was
    check = [str(changed.python), "-c", "import six, tomli"]
    assert subprocess.run(check, capture_output=True).returncode == 0


def test_half_built_env_is_rebuilt(base: Path, built: list[EnvProgress]) -> None:
    (base / "envs" / "half").mkdir()
    (base / "envs" / "half" / "requirements.txt").write_text("tomli\n# half\n")
    target = plan(config_of(base, {"half": pool("envprobe:Probe", "envs/half")}), "half")
    assert target is not None
    (target.path / "bin").mkdir(parents=True)
    (target.path / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # a crashed build: no marker
    (target.path / "leftover").write_text("from the crashed build")
    events: list[EnvProgress] = []
    again = ensure(target, events.append)
    assert not again.cached and "building" in [e.stage for e in events]
    assert target.built() and not (target.path / "leftover").exists()
    assert subprocess.run([str(target.python), "-c", "import tomli"]).returncode == 0


def test_unresolvable_requirement_fails_naming_pool_and_env_file(base: Path) -> None:
    (base / "envs" / "bad").mkdir()
    env_file = base / "envs" / "bad" / "requirements.txt"
    env_file.write_text("this-package-does-not-exist-anywhere==9.9.9\n")
    config = config_of(base, {"bad": pool("envprobe:Probe", "envs/bad")})
    with pytest.raises(errors.InvalidConfig) as exc:
        ensure_envs(config)
    message = str(exc.value)
    assert f"pool 'bad': env build failed for {env_file}" in message
    assert "this-package-does-not-exist-anywhere" in message  # the installer's own key line
    target = plan(config, "bad")
    assert target is not None and not target.path.exists()  # nothing half-built left, marked or not


def test_missing_package_fails_start_naming_it_and_the_env_file(
    start_orchestrator: Start, base: Path, built: list[EnvProgress]
) -> None:
    env_file = base / "envs" / "tiny" / "requirements.txt"
    with pytest.raises(errors.InvalidConfig) as exc:
        start_orchestrator({"tiny": pool("needsmissing:Needs")}, base_dir=base)
    message = str(exc.value)
    assert f"imports 'humanize' but {env_file} does not provide it" in message, message
    assert "pool 'tiny'" in message


def test_envs_build_command_prints_a_table_and_names_unknown_pools(base: Path, built: list[EnvProgress]) -> None:
    env = {**os.environ, "ORCHESTRATOR_ENVS_DIR": str(base / "cache")}
    command = [sys.executable, "-m", "orchestrator", "envs", "build", "--config", str(base / "pools.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["pool", "env", "size", "time", "result"])
    row = lines[header + 2].split()
    assert row[0] == "tiny" and row[1].startswith(str(base / "cache" / "tiny-")) and row[-1] == "cached", lines
    assert row[2].endswith(("MiB", "GiB"))
    wrong = subprocess.run([*command, "tiny", "nope"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert wrong.returncode == 2
    assert "no pool 'nope'" in wrong.stdout and "(pools: tiny)" in wrong.stdout, wrong.stdout
    listing = [sys.executable, "-m", "orchestrator", "envs", "list", "--config", str(base / "pools.yaml")]
    listed = subprocess.run(listing, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert listed.returncode == 0 and any(
        line.split()[:1] == ["tiny"] and line.split()[-2:] == ["built", "yes"] for line in listed.stdout.splitlines()
    ), listed.stdout


def test_actor_requirements_are_the_orchestrators_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["server"])
    assert set(ACTOR_REQUIREMENTS) <= declared
    assert any(re.split(r"[<>=!~ ]", spec)[0] == "uv" for spec in project["optional-dependencies"]["server"])


def test_key_line_is_the_installers_reason() -> None:
    uv = [
        "Using Python 3.11.7 environment at: /x",
        "error: No solution found when resolving dependencies",
        "  cause: Because nope was not found in the package registry, your requirements are unsatisfiable.",
    ]
    assert key_line(uv) == (
        "No solution found when resolving dependencies: "
        "Because nope was not found in the package registry, your requirements are unsatisfiable."
    )
    pip = [
        "Collecting nope==9",
        "ERROR: Could not find a version that satisfies the requirement nope==9 (from versions: none)",
        "ERROR: No matching distribution found for nope==9",
    ]
    assert key_line(pip) == "Could not find a version that satisfies the requirement nope==9 (from versions: none)"
    assert key_line(["Killed"]) == ""


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data").write_bytes(os.urandom(256 * 1024))
    alone = disk_usage([tmp_path / "a"])
    os.link(tmp_path / "a" / "data", tmp_path / "a" / "again")
    assert disk_usage([tmp_path / "a"]) == alone  # the second name costs no block
    (tmp_path / "b").mkdir()
    os.link(tmp_path / "a" / "data", tmp_path / "b" / "data")
    both = disk_usage([tmp_path / "a", tmp_path / "b"])
    assert disk_usage([tmp_path / "b"]) > 256 * 1024 and both < alone + 256 * 1024  # shared: counted once
