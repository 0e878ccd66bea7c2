"""Session checkpoints a pool actor writes into the store itself (real SQLite files, real processes): only on
the store's node and into that very store (its id), interleaved with the coordinator's own writes from
another process without losing or tearing any, large ones in files whose replaced copies are deleted."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

from orchestrator.checkpoints import INLINE_LIMIT, LocalCheckpoints
from orchestrator.control.store import Store

NODE = "node-a"


def writer(state_dir: Path, store_id: str) -> LocalCheckpoints:
    local = LocalCheckpoints.open(state_dir, store_id, NODE, NODE)
    assert local is not None, "the writer did not open on the store's own node"
    return local


def test_the_writer_opens_only_on_the_stores_node_and_into_that_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert store.id == Store(tmp_path / "state").id, "a store keeps its id when opened again"
    assert LocalCheckpoints.open(tmp_path / "state", store.id, NODE, "node-b") is None  # another machine
    assert LocalCheckpoints.open(tmp_path / "state", uuid.uuid4().hex, NODE, NODE) is None  # another store
    assert LocalCheckpoints.open(tmp_path / "state", None, NODE, NODE) is None  # launched without one
    assert LocalCheckpoints.open(tmp_path / "elsewhere", store.id, NODE, NODE) is None  # no store there
    assert not (tmp_path / "elsewhere").exists(), "a writer must never create a store"

    writer(tmp_path / "state", store.id).put("session:s1", b"state one")
    assert store.get_checkpoint("session:s1") == b"state one"


def _write_many(state_dir: Path, store_id: str, count: int) -> None:
    local = writer(state_dir, store_id)
    for i in range(count):
        local.put(f"session:actor-{i % 10}", f"actor {i}".encode())
        local.put(f"session:shared-{i % 5}", b"a" * (INLINE_LIMIT + 1) if i % 7 == 0 else f"actor {i}".encode())


def test_an_actor_process_and_the_coordinator_write_the_store_in_turn(tmp_path: Path) -> None:
    store = Store(tmp_path)
    count = 300
    actor = multiprocessing.get_context("spawn").Process(target=_write_many, args=(tmp_path, store.id, count))
    actor.start()
    for i in range(count):  # the coordinator's own writes, at the same time
        store.put_checkpoint(f"session:coord-{i % 10}", f"coordinator {i}".encode())
        store.put_checkpoint(f"session:shared-{i % 5}", f"coordinator {i}".encode())
    actor.join(timeout=120)
    assert actor.exitcode == 0, "the actor's writes failed (the store was busy or locked)"

    for k in range(10):
        assert store.get_checkpoint(f"session:actor-{k}") == f"actor {count - 10 + k}".encode()
        assert store.get_checkpoint(f"session:coord-{k}") == f"coordinator {count - 10 + k}".encode()
    for k in range(5):  # whichever wrote last, a whole checkpoint: a file's row never names a deleted file
        assert store.get_checkpoint(f"session:shared-{k}") is not None
    files = {path.name for path in (tmp_path / "checkpoints").iterdir()}
    named = {Path(row[0]).name for row in store.db.execute("SELECT path FROM checkpoints WHERE path IS NOT NULL")}
    assert files == named, "replaced checkpoint files must be deleted, and only those"


def test_a_large_checkpoint_goes_to_a_file_and_its_replacement_deletes_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    local = writer(tmp_path, store.id)
    big = b"x" * (INLINE_LIMIT + 1)
    local.put("session:big", big)
    (first,) = list((tmp_path / "checkpoints").iterdir())
    assert store.get_checkpoint("session:big") == big
    local.put("session:big", b"small now")
    assert not first.exists()
    assert store.get_checkpoint("session:big") == b"small now"
