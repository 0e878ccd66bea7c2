"""``confined_path``: a path a client names stays under the operator's folder, or is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.contract import confined_path
from orchestrator.errors import InvalidArguments


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / ".snapshots" / "key").mkdir(parents=True)
    (folder / "kb").mkdir()
    return folder


def test_nested_relative_path_lands_under_the_root(root: Path) -> None:
    resolved = confined_path(root, "kb/v1/index")
    assert resolved == root.resolve() / "kb" / "v1" / "index" and resolved.is_relative_to(root.resolve())
    assert confined_path(str(root), "new-folder/x") == root.resolve() / "new-folder" / "x"  # need not exist
    assert not (root / "new-folder").exists()  # resolving creates nothing


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("C:\\Windows\\x", "absolute"),
        ("~/x", "absolute"),
        ("~", "absolute"),
        ("..", "'..'"),
        ("../outside", "'..'"),
        ("kb/../../outside", "'..'"),
        ("a/../.snapshots/key", "'..'"),
        ("kb\\..\\..\\x", "'..'"),
        (".snapshots/key", "hidden"),
        ("kb/.hidden/x", "hidden"),
        ("kb/v1/.git", "hidden"),
        ("kb/\x00x", "NUL"),
        ("", "non-empty"),
        ("   ", "non-empty"),
        (".", "outside"),  # the root itself is no file to write
        ("./", "outside"),
    ],
)
def test_escapes_are_refused_naming_the_field(root: Path, path: str, why: str) -> None:
    with pytest.raises(InvalidArguments) as refused:
        confined_path(root, path, field="target", op="save")
    error = refused.value
    assert error.detail == [{"field": "target", "message": error.detail[0]["message"]}]
    assert error.message.startswith("target: ") and why in error.message and error.op == "save"
    assert error.http_status == 422


def test_symlink_inside_the_root_that_points_outside_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "kb" / "escape").symlink_to(outside)
    with pytest.raises(InvalidArguments, match="outside the configured folder") as refused:
        confined_path(root, "kb/escape/x")
    assert refused.value.detail[0]["field"] == "path"
    (root / "inside").symlink_to(root / "kb")  # a link that stays inside is fine
    assert confined_path(root, "inside/x") == root.resolve() / "kb" / "x"


def test_symlink_loop_is_refused_not_a_crash(root: Path) -> None:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    with pytest.raises(InvalidArguments) as refused:
        confined_path(root, "a/x")
    assert refused.value.detail[0]["field"] == "path"
