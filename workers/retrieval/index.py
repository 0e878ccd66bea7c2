"""A session's vector index: exact search (torch matrix products) for small corpora, FAISS past a size.

Rows are float32 vectors with an id, a document and a metadata dict each.
Scores are inner products (cosine for normalized vectors). Past
``faiss_min_docs`` rows, a FAISS IVF index (inner product) proposes ``oversample * k``
candidates and the exact scores of those candidates rank them. Filters are
applied before exact search and on the candidates for FAISS (falling back to
exact search over the matching rows when FAISS finds too few of them).
Both score the queries in blocks, so a search holds at most about
``SCORE_BLOCK_BYTES`` of scores at once however many queries and rows meet.

Pickling an index (the host does it after each session call, to checkpoint the
session) keeps the rows inline while they are few; past ``snapshot_min_docs``
it writes a snapshot file with :meth:`save` and pickles only its path.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import InvalidArguments

FORMAT = 1
SCORE_BLOCK_BYTES = 64 << 20  # scores (queries x rows) one search step holds at once
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")


def bad(field: str, message: str, op: str | None = None) -> InvalidArguments:
    """An invalid_arguments error naming ``field``."""
    return InvalidArguments(f"{field}: {message}", op=op, detail=[{"field": field, "message": message}])


def check_filter(where: dict[str, Any], field: str = "filter") -> None:
    """Reject unknown ``$operators`` up front (a typo must not silently match nothing)."""
    for key, cond in where.items():
        if isinstance(cond, dict):
            for name in cond:
                if name not in OPERATORS:
                    raise bad(f"{field}.{key}", f"unknown operator {name!r} (known: {', '.join(OPERATORS)})")


def query_blocks(count: int, width: int, item_bytes: int = 4) -> Iterator[slice]:
    """Slices of ``count`` queries whose ``width`` results each fit ``SCORE_BLOCK_BYTES`` (one query at least)."""
    step = max(1, SCORE_BLOCK_BYTES // max(1, width * item_bytes))
    for start in range(0, count, step):
        yield slice(start, start + step)


COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, a: bool(v == a),
    "$ne": lambda v, a: bool(v != a),
    "$in": lambda v, a: v in a,
    "$nin": lambda v, a: v not in a,
    "$gt": lambda v, a: v is not None and bool(v > a),
    "$gte": lambda v, a: v is not None and bool(v >= a),
    "$lt": lambda v, a: v is not None and bool(v < a),
    "$lte": lambda v, a: v is not None and bool(v <= a),
}


def matches(meta: dict[str, Any], where: dict[str, Any]) -> bool:
    """Mongo-style metadata match: ``{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": [...]}}``."""
    for key, cond in where.items():
        value = meta.get(key)
        if not isinstance(cond, dict):
            if value != cond:
                return False
            continue
        for name, arg in cond.items():
            try:
                ok = (key in meta) == bool(arg) if name == "$exists" else COMPARE[name](value, arg)
            except TypeError:  # comparing unlike types (or $in a non-list): no match
                ok = False
            if not ok:
                return False
    return True


class VectorIndex:
    """Vectors with ids, documents and metadata; exact or FAISS search; save/load; snapshot pickling."""

    def __init__(
        self,
        dim: int,
        faiss_min_docs: int = 20_000,
        oversample: int = 4,
        snapshot_min_docs: int = 10_000,
        snapshot_dir: str | None = None,
    ) -> None:
        self.dim = dim
        self.faiss_min_docs = faiss_min_docs
        self.oversample = oversample
        self.snapshot_min_docs = snapshot_min_docs
        self.snapshot_dir = snapshot_dir
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.ids: list[str] = []
        self.docs: list[str | None] = []
        self.metadata: list[dict[str, Any]] = []
        self.rows: dict[str, int] = {}
        self._pending: list[np.ndarray] = []  # appended chunks, joined on the next read
        self._faiss: Any = None
        self._faiss_rows = 0  # rows already in the FAISS index
        self._faiss_trained = 0  # rows it was trained on
        self._device_matrix: Any = None  # cached copy of the vectors on the GPU
        self._snapshot_key = uuid.uuid4().hex
        self._snapshot_version = -1
        self.version = 0

    def __len__(self) -> int:
        return len(self.ids)

    # --------------------------------------------------------------- writes
    def add(
        self,
        vectors: np.ndarray,
        docs: Sequence[str | None],
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[str]:
        """Add rows (an existing id is replaced); returns their ids."""
        n = len(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise bad("vectors", f"expected {self.dim} numbers per vector, got shape {list(vectors.shape)}")
        if ids is None:
            ids = [uuid.uuid4().hex for _ in range(n)]
        elif len(set(ids)) != len(ids):
            raise bad("ids", "ids must be unique within one call")
        if metadata is None:
            metadata = [None] * n
        replaced = [i for i in ids if i in self.rows]
        if replaced:
            self.delete(replaced)
        self._pending.append(np.array(vectors, dtype=np.float32))  # a copy: the index owns its rows
        start = len(self.ids)
        for offset, (key, doc, meta) in enumerate(zip(ids, docs, metadata, strict=True)):
            self.rows[key] = start + offset
            self.ids.append(key)
            self.docs.append(doc)
            self.metadata.append(dict(meta or {}))
        self._changed(rebuild=False)
        return list(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove rows by id; an unknown id is an error naming it, and then nothing is removed."""
        unknown = [i for i in ids if i not in self.rows]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise bad("ids", f"{len(unknown)} unknown id(s): {shown} (nothing was deleted)")
        drop = {self.rows[i] for i in ids}
        keep = np.array([r for r in range(len(self.ids)) if r not in drop], dtype=np.int64)
        self.vectors = self.matrix()[keep]
        self.ids = [self.ids[r] for r in keep]
        self.docs = [self.docs[r] for r in keep]
        self.metadata = [self.metadata[r] for r in keep]
        self.rows = {key: r for r, key in enumerate(self.ids)}
        self._changed(rebuild=True)
        return len(drop)

    def clear(self) -> None:
        """Drop every row."""
        self.__init__(self.dim, self.faiss_min_docs, self.oversample, self.snapshot_min_docs, self.snapshot_dir)  # type: ignore[misc]

    def _changed(self, rebuild: bool) -> None:
        self.version += 1
        self._device_matrix = None
        if rebuild:
            self._faiss, self._faiss_rows = None, 0

    def matrix(self) -> np.ndarray:
        """All vectors as one (n, dim) float32 array."""
        if self._pending:
            self.vectors = np.concatenate([self.vectors, *self._pending])
            self._pending = []
        return self.vectors

    def prepare(self) -> None:
        """Join the appended rows (and build FAISS when it will be used) now, so that concurrent searches
        of an index nobody writes any more (a corpus) only read it."""
        self.matrix()
        if self.uses_faiss:
            self._ivf()

    # --------------------------------------------------------------- search
    @property
    def uses_faiss(self) -> bool:
        """Whether searches go through FAISS (the index is past ``faiss_min_docs``)."""
        return len(self) >= self.faiss_min_docs

    def search(
        self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None, device: str = "cpu", exact: bool = False
    ) -> list[list[tuple[int, float]]]:
        """For each query, up to ``k`` (row, score) pairs, best first."""
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise bad("vectors", f"expected {self.dim} numbers per query vector, got {queries.shape[1]}")
        allowed: np.ndarray | None = None
        if where:
            check_filter(where)
            allowed = np.fromiter((matches(m, where) for m in self.metadata), dtype=bool, count=len(self))
            if not allowed.any():
                return [[] for _ in range(len(queries))]
        if exact or not self.uses_faiss or (allowed is not None and allowed.sum() < self.faiss_min_docs):
            return self._exact(queries, k, allowed, device)
        return self._approximate(queries, k, allowed, device)

    def _exact(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, device: str
    ) -> list[list[tuple[int, float]]]:
        import torch

        matrix = self.matrix()
        rows = np.flatnonzero(allowed) if allowed is not None else None
        if device.startswith("cuda"):
            if self._device_matrix is None:
                self._device_matrix = torch.from_numpy(matrix).to(device)
            docs = self._device_matrix if rows is None else self._device_matrix[torch.from_numpy(rows).to(device)]
        else:
            docs = torch.from_numpy(matrix if rows is None else matrix[rows])
        results: list[list[tuple[int, float]]] = []
        for block in query_blocks(len(queries), docs.shape[0]):
            scores = torch.from_numpy(queries[block]).to(docs.device) @ docs.T
            top = torch.topk(scores, min(k, docs.shape[0]), dim=1)
            values, index = top.values.cpu().numpy(), top.indices.cpu().numpy()
            if rows is not None:
                index = rows[index]
            results.extend(
                [(int(r), float(s)) for r, s in zip(ri, si, strict=True)] for ri, si in zip(index, values, strict=True)
            )
        return results

    def _approximate(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, device: str
    ) -> list[list[tuple[int, float]]]:
        ivf = self._ivf()
        want = min(len(self), k * self.oversample * (4 if allowed is not None else 1))
        matrix = self.matrix()
        results: list[list[tuple[int, float]]] = []
        for block in query_blocks(len(queries), want, item_bytes=12):  # FAISS gives a float32 and an int64 each
            _, candidates = ivf.search(queries[block], want)
            for q, rows in zip(queries[block], candidates, strict=True):
                rows = rows[rows >= 0]
                if allowed is not None:
                    rows = rows[allowed[rows]]
                    if len(rows) < k:  # the filter is selective: search its rows exactly
                        results.extend(self._exact(q[None, :], k, allowed, device))
                        continue
                exact = matrix[rows] @ q  # re-rank the candidates by their exact scores
                best = np.argsort(-exact)[:k]
                results.append([(int(rows[i]), float(exact[i])) for i in best])
        return results

    def _ivf(self) -> Any:
        """The FAISS IVF index over every row: trained on first use (again once the rows have grown 4x),
        extended on add, rebuilt after a delete. ``nlist`` = 2 sqrt(n) lists, ``nprobe`` = 1/8 of them (>= 32)."""
        import faiss

        matrix = self.matrix()
        if self._faiss is None or len(matrix) > 4 * self._faiss_trained:
            nlist = max(1, int(2 * np.sqrt(len(matrix))))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(len(matrix), min(len(matrix), 64 * nlist), replace=False)
            ivf.train(matrix[np.sort(sample)])
            ivf.nprobe = min(nlist, max(32, nlist // 8))
            self._faiss, self._faiss_rows, self._faiss_trained = ivf, 0, len(matrix)
        if self._faiss_rows < len(matrix):
            self._faiss.add(matrix[self._faiss_rows :])
            self._faiss_rows = len(matrix)
        return self._faiss

    # ------------------------------------------------------------ save/load
    def save(self, path: str | Path) -> dict[str, Any]:
        """Write ``vectors.npy`` and ``rows.json`` into the directory ``path`` (atomically: a temp dir, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        np.save(tmp / "vectors.npy", self.matrix())
        rows = {"format": FORMAT, "dim": self.dim, "ids": self.ids, "docs": self.docs, "metadata": self.metadata}
        (tmp / "rows.json").write_text(json.dumps(rows))
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            target.rename(old)
            tmp.rename(target)
            for child in old.iterdir():
                child.unlink()
            old.rmdir()
        else:
            tmp.rename(target)
        return {"path": str(target), "size": len(self), "dim": self.dim}

    def load(self, path: str | Path, field: str = "path") -> None:
        """Replace every row with those saved at ``path``."""
        source = Path(path)
        try:
            rows = json.loads((source / "rows.json").read_text())
            vectors = np.load(source / "vectors.npy")
        except FileNotFoundError:
            raise bad(field, f"no saved index at {str(path)!r}") from None
        except (ValueError, OSError) as exc:
            raise bad(field, f"cannot read the index at {str(path)!r}: {exc}") from None
        if rows.get("dim") != self.dim:
            raise bad(field, f"the saved index has {rows.get('dim')}-dimensional vectors; this model makes {self.dim}")
        self.clear()
        if len(rows["ids"]):
            self.add(vectors, rows["docs"], rows["ids"], rows["metadata"])

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("_faiss", "_faiss_rows", "_faiss_trained", "_device_matrix")
        }
        if len(self) < self.snapshot_min_docs or self.snapshot_dir is None:
            state["vectors"] = self.matrix()
            state["_pending"] = []
            return state
        path = Path(self.snapshot_dir) / f"{self._snapshot_key}"
        if self._snapshot_version != self.version:  # unchanged since the last snapshot: reuse it
            self.save(path)
            self._snapshot_version = self.version
        light = {k: v for k, v in state.items() if k not in ("vectors", "_pending", "ids", "docs", "metadata", "rows")}
        return {**light, "_snapshot": str(path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state.pop("_snapshot", None)
        self.__dict__.update(state)
        self._faiss, self._faiss_rows, self._faiss_trained, self._device_matrix = None, 0, 0, None
        if snapshot is not None:
            version, key = self.version, self._snapshot_key
            self.vectors = np.empty((0, self.dim), dtype=np.float32)
            self.ids, self.docs, self.metadata, self.rows, self._pending = [], [], [], {}, []
            self.load(snapshot)
            self.version, self._snapshot_key, self._snapshot_version = version, key, version


def snapshot_dir_default() -> str:
    """Where large session indexes are snapshotted when the pool does not say."""
    return os.path.join(os.path.expanduser("~"), ".cache", "orchestrator", "retrieval-snapshots")
