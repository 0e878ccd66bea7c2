"""pools.yaml validation: every error names the file, the pool and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config, parse_bytes, parse_config
from orchestrator.errors import InvalidConfig

GOOD = {"worker": "tests.kit:Toolbox"}


def error_of(data: dict, base_dir: Path | str = ".") -> str:
    with pytest.raises(InvalidConfig) as info:
        parse_config(data, base_dir=base_dir)
    return str(info.value.message)


def test_negative_size_names_pool_and_field() -> None:
    message = error_of({"pools": {"light": {**GOOD, "size": {"min": -1}}}})
    assert message == "pools.yaml: pools.light.size.min: must be >= 0, got -1"


def test_unknown_field_is_rejected_by_name() -> None:
    assert "pools.yaml: pools.light.sizes: unknown field" in error_of({"pools": {"light": {**GOOD, "sizes": 2}}})
    assert "pools.yaml: colour: unknown field" in error_of({"colour": "blue"})


def test_bad_entry_point_names_field() -> None:
    message = error_of({"pools": {"heavy": {"worker": "workers.testing.Toolbox"}}})
    assert "pools.heavy.worker" in message and "pkg.module:Class" in message


def test_bad_memory_unit_names_field_and_unit() -> None:
    message = error_of({"pools": {"light": {**GOOD, "resources": {"memory": "2XB"}}}})
    assert "pools.light.resources.memory" in message and "'XB'" in message


def test_missing_env_folder_names_pool_and_path(tmp_path: Path) -> None:
    message = error_of({"pools": {"retrieval": {**GOOD, "env": "envs/nope"}}}, base_dir=tmp_path)
    assert "pools.retrieval.env" in message and "nope" in message and "does not exist" in message


def test_env_folder_without_requirements_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "envs" / "light").mkdir(parents=True)
    message = error_of({"pools": {"light": {**GOOD, "env": "envs/light"}}}, base_dir=tmp_path)
    assert "requirements.txt" in message


def test_max_below_min_is_rejected() -> None:
    assert "max (1) must be >= min (3)" in error_of({"pools": {"light": {**GOOD, "size": {"min": 3, "max": 1}}}})


def test_units_and_defaults() -> None:
    config = parse_config({"pools": {"light": {**GOOD, "size": 3, "resources": {"memory": "2GiB", "num_gpus": 0.5}}}})
    pool = config.pools["light"]
    assert (pool.size.min, pool.size.max) == (3, 3)
    assert pool.resources.memory == 2 * 1024**3
    assert pool.resources.num_gpus == 0.5
    assert pool.sessions.checkpoint == "explicit"
    assert parse_bytes("512MB") == 512 * 1000**2
    assert parse_bytes("1.5KiB") == 1536


def test_env_var_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHT_SIZE", "4")
    config = parse_config(
        {"pools": {"light": {**GOOD, "size": "${LIGHT_SIZE}", "options": {"greeting": "${GREETING:-hi there}"}}}}
    )
    assert config.pools["light"].size.min == 4
    assert config.pools["light"].options["greeting"] == "hi there"


def test_unset_env_var_without_default_names_field() -> None:
    message = error_of({"pools": {"light": {**GOOD, "options": {"model": "${SURELY_NOT_SET_VAR}"}}}})
    assert "pools.light.options.model" in message and "SURELY_NOT_SET_VAR" in message


def test_load_config_reads_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("pools:\n  light:\n    worker: tests.kit:Toolbox\n    size: {min: -2}\n")
    with pytest.raises(InvalidConfig, match=r"custom.yaml: pools.light.size.min: must be >= 0, got -2"):
        load_config(path)
    with pytest.raises(InvalidConfig, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_pools_yaml_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "pools.yaml")
    assert config.pools


def test_gateway_tokens_are_named_and_never_echoed_in_errors() -> None:
    config = parse_config({"gateway": {"token": "t0-secret", "tokens": {"ci": "ci-secret", "unset": ""}}})
    assert config.gateway.credentials() == {"default": "t0-secret", "ci": "ci-secret"}  # empty values are no token
    for bad in ({"tokens": {"bad name": "leaky-secret"}}, {"tokens": ["leaky-secret"]}, {"token": ["leaky-secret"]}):
        with pytest.raises(InvalidConfig) as exc:
            parse_config({"gateway": bad})
        assert "gateway.token" in str(exc.value) and "leaky-secret" not in str(exc.value)
