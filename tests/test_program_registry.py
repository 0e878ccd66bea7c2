"""The program registry's store half, on a real SQLite file: numbering, the live pointer and listing survive
reopening; a number is never given twice and a refused version leaves the registry as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestrator.control.store import Store


def test_versions_number_from_one_keep_their_records_and_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.next_program_version("rag") == 1 and store.program_names() == []
    store.add_program_version("rag", 1, {"class": "a:B", "state": {"x": 1}}, live=True)
    store.add_program_version("rag", 2, {"class": "a:B", "state": {"x": 2}}, live=False)
    store.add_program_version("other", 1, {"signature": "q -> a"}, live=True)
    assert store.next_program_version("rag") == 3
    store.set_live_program("rag", 2)
    store.close()

    again = Store(tmp_path)
    versions, live = again.program_versions("rag")
    assert live == 2 and [(v["version"], v["state"]) for v in versions] == [(1, {"x": 1}), (2, {"x": 2})]
    assert [(p["name"], p["live"], p["versions"], p["latest"]) for p in again.program_names()] == [
        ("other", 1, 1, 1),
        ("rag", 2, 2, 2),
    ]
    assert again.program_versions("nope") == ([], None)


def test_a_version_number_is_never_reused_and_a_refused_version_leaves_the_registry_as_it_was(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_program_version("rag", 1, {"state": {}}, live=True)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_program_version("rag", 1, {"state": {"other": 1}}, live=True)  # the same number again
    with pytest.raises(TypeError):
        store.add_program_version("rag", 2, {"state": object()}, live=True)  # not JSON: nothing is written
    versions, live = store.program_versions("rag")
    assert live == 1 and [v["state"] for v in versions] == [{}]
