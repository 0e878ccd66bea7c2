"""Placement: per-pool resources (logical GPUs) and per-pool virtualenvs."""

from __future__ import annotations

import importlib.util

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import ROOT, Start, actors, toolbox


def test_gpu_pool_places_what_fits_and_reports_the_rest_pending(start_orchestrator: Start) -> None:
    # The session's Ray has 2 logical GPUs: 2 of 3 actors fit, the third waits with a reason.
    orch = start_orchestrator({"gpu": toolbox(size=3, resources={"num_gpus": 1}), "cpu": toolbox(size=1)})
    slots = actors(orch, "gpu")
    states = sorted(a["state"] for a in slots)
    assert states == ["pending", "ready", "ready"], slots
    pending = next(a for a in slots if a["state"] == "pending")
    assert "GPU=1" in pending["reason"]
    devices = {orch.call("gpu", "whoami")["cuda_visible_devices"] for _ in range(10)}
    assert devices == {"0", "1"}  # each placed actor sees its own GPU
    assert orch.call("cpu", "echo", value=1) == 1  # a pending pool does not block the others
    orch.shutdown(drain_s=1.0)


@pytest.mark.slow
def test_each_pool_runs_in_its_own_env(start_orchestrator: Start) -> None:
    orch = start_orchestrator(
        {
            "old": toolbox(env="tests/envs/inflection-050"),
            "new": toolbox(env="tests/envs/inflection-051", env_manager="pip"),
        },
        base_dir=ROOT,
        start_timeout_s=900,
    )
    assert orch.call("old", "package_version", package="inflection") == "0.5.0"
    assert orch.call("new", "package_version", package="inflection") == "0.5.1"
    assert importlib.util.find_spec("inflection") is None  # the orchestrator's own process has neither
    with pytest.raises(errors.DependencyMissing, match=r"tests/envs/inflection-050/requirements.txt"):
        orch.call("old", "needs_module", module="surely_not_installed_pkg")


def test_broken_env_fails_start_naming_the_pool(start_orchestrator: Start, tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    (base / "envs" / "bad").mkdir(parents=True)
    (base / "envs" / "bad" / "requirements.txt").write_text("this-package-does-not-exist-anywhere==9.9.9\n")
    with pytest.raises(errors.InvalidConfig, match="pool 'bad': env build failed"):
        start_orchestrator({"bad": toolbox(env="envs/bad")}, base_dir=base)


def test_start_and_connect(start_orchestrator: Start) -> None:
    orch = start_orchestrator({"c": toolbox()})
    other = orchestrator.connect(namespace=orch.namespace)
    assert other.call("c", "echo", value="via connect") == "via connect"
    other.close()


def test_prebuilt_py_executable_is_checked_and_used(start_orchestrator: Start, tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    bare = Path(str(tmp_path)) / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(errors.InvalidConfig, match=r"pools.isolated.py_executable: .* cannot import ray"):
        start_orchestrator({"isolated": toolbox(py_executable=str(bare / "bin" / "python"))})
    orch = start_orchestrator({"same": toolbox(py_executable=sys.executable)})
    assert orch.call("same", "echo", value="prebuilt") == "prebuilt"
