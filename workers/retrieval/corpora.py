"""Named corpora: documents embedded once (by a ``corpus_build`` job), kept as files, served by every actor.

    state_dir/corpora/<name>/<build>/index/       vectors.npy + rows.json (VectorIndex.save's format)
    state_dir/corpora/<name>/<build>/corpus.json  {name, build, documents, dimensions, model, built}

A build is written into a hidden folder beside its final one and renamed into
place whole, so no actor ever sees half a corpus. Each actor holds the corpora
it serves in a :class:`Shelf` (read-only indexes, searched by many threads at
once); the pool-wide remembered op ``corpus_load`` fills every actor's shelf
from these files, now and on every actor that starts later, with no embedding.
Nothing here is named by a client as a path: names and builds are checked
against :data:`CORPUS_NAME` first.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.contract import Context
from orchestrator.contract.paths import state_dir
from orchestrator.errors import CorpusNotFound, InvalidConfig, OrchestratorError
from workers.retrieval.index import VectorIndex, bad

CORPUS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)  # a corpus name, and a build's folder
INDEX, META = "index", "corpus.json"
PARTS = "corpus-parts"  # in a build job's folder: the vectors of its finished steps, read again by a re-run


class CorpusDoc(BaseModel):
    """One document of a corpus: ``{"id", "text"}`` and optional ``metadata`` (what ``search``'s filter matches)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    metadata: dict[str, Any] | None = None


def check_name(name: str, field: str = "name", op: str | None = None) -> str:
    """``name`` if it is a corpus name (a letter or digit, then up to 63 of letters, digits, ``_ . -``)."""
    if not CORPUS_NAME.fullmatch(name):
        message = f"{name!r} is not a corpus name (a letter or digit, then up to 63 of: letters, digits, _ . -)"
        raise bad(field, message, op)
    return name


def root() -> Path:
    """Where corpora live: ``state_dir/corpora``."""
    return state_dir() / "corpora"


def documents(
    docs: list[CorpusDoc] | None,
    file_id: str | None,
    handle: Callable[[], Any],
    max_docs: int,
    max_chars: int,
) -> list[CorpusDoc]:
    """A build's documents, inline (``docs``) or from an uploaded JSONL file (``file_id``), every one checked:
    a text (not blank, at most ``max_chars``), an id (not empty, unique), at most ``max_docs`` of them.
    A problem is invalid_arguments naming where it is (``docs.3.id``, ``file_id.line 4.text``)."""
    if (docs is None) == (file_id is None):
        field = "docs" if docs is None else "file_id"
        raise bad(field, "give docs (a list of {id, text}) or file_id (an uploaded JSONL file), exactly one")
    if file_id is not None:
        rows, places = _file_rows(file_id, handle)
    else:
        rows, places = list(docs or []), [f"docs.{i}" for i in range(len(docs or []))]
    field = "docs" if docs is not None else "file_id"
    if not rows:
        raise bad(field, "holds no documents")
    if len(rows) > max_docs:
        raise bad(field, f"{len(rows)} documents; a corpus holds at most {max_docs} (options.max_corpus_docs)")
    first: dict[str, str] = {}
    for row, place in zip(rows, places, strict=True):
        if not row.id:
            raise bad(f"{place}.id", "is empty")
        if row.id in first:
            raise bad(f"{place}.id", f"duplicate id {row.id!r} (also at {first[row.id]}.id)")
        first[row.id] = place
        if not row.text.strip():
            raise bad(f"{place}.text", "is empty")
        if len(row.text) > max_chars:
            limit = f"this pool takes at most {max_chars} per text (options.max_input_chars)"
            raise bad(f"{place}.text", f"{len(row.text)} characters; {limit}")
    return rows


def _file_rows(file_id: str, handle: Callable[[], Any]) -> tuple[list[CorpusDoc], list[str]]:
    """The rows of an uploaded JSONL file (one ``{"id", "text"}`` per non-empty line) and where each is."""
    try:
        data = handle().file_content(file_id)
    except OrchestratorError as exc:  # file_not_found, or the coordinator refused
        raise bad("file_id", exc.message) from None
    try:
        text = bytes(data).decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise bad("file_id", f"not UTF-8 (byte {exc.start})") from None
    rows, places = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        place = f"file_id.line {number}"
        try:
            rows.append(CorpusDoc.model_validate_json(line))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            message = "unexpected field" if error["type"] == "extra_forbidden" else error["msg"]
            raise bad(f"{place}.{where}" if where else place, message) from None
        places.append(place)
    return rows, places


def check_concurrency(handle: Any, pool: str) -> None:
    """Refuse a build on a pool whose actors run one call at a time: the build waits for the pool-wide
    ``corpus_load`` to reach its own actor, which could never start (invalid_config naming the limit)."""
    concurrency = handle.router.pool(pool)["limits"]["concurrency"]
    if concurrency < 2:
        raise InvalidConfig(
            f"pools.{pool}.limits.concurrency: corpus_build needs at least 2, got {concurrency} (the "
            "pool-wide corpus_load must reach this actor while the build still runs on it)",
            op="corpus_build",
        )


def embed_in_steps(
    ctx: Context, build: str, texts: list[str], encode: Callable[[list[str]], np.ndarray], batch: int
) -> np.ndarray | None:
    """Every text's vector, ``batch`` texts per step: a progress event and (in a job) a checkpoint per step, the
    step's vectors saved in the job's folder, so a re-run reads the finished steps back. None once cancelled."""
    resume = ctx.resume or {}
    parts = ctx.job_dir / PARTS if ctx.job_id is not None else None
    if parts is not None:
        parts.mkdir(exist_ok=True)
    vectors: list[np.ndarray] = []
    for step, start in enumerate(range(0, len(texts), batch)):
        saved = parts / f"{step:06d}.npy" if parts is not None else None
        if saved is not None and step < int(resume.get("steps", 0)) and saved.is_file():
            vectors.append(np.load(saved))
            continue
        if ctx.cancelled:
            return None
        vectors.append(encode(texts[start : start + batch]))
        if saved is not None:
            np.save(saved, vectors[-1])
        ctx.progress(done=start + len(vectors[-1]), total=len(texts))
        if ctx.job_id is not None:
            ctx.checkpoint({"build": build, "steps": step + 1})
    return np.concatenate(vectors)


def write_build(name: str, build: str, vectors: np.ndarray, docs: list[CorpusDoc], model: str) -> dict[str, Any]:
    """Write a build's files (hidden, then renamed into place whole); its ``corpus.json``. A build folder that is
    already there (a re-run after the rename) is kept as it is."""
    final = root() / name / build
    if (final / META).is_file():
        return dict(json.loads((final / META).read_text()))
    hidden = final.with_name(f".{build}.tmp")
    shutil.rmtree(hidden, ignore_errors=True)  # what a run that died while writing left
    hidden.mkdir(parents=True)
    index = VectorIndex(int(vectors.shape[1]))
    index.add(vectors, [d.text for d in docs], [d.id for d in docs], [d.metadata for d in docs])
    index.save(hidden / INDEX)
    meta = {
        "name": name,
        "build": build,
        "documents": len(docs),
        "dimensions": int(vectors.shape[1]),
        "model": model,
        "built": time.time(),
    }
    (hidden / META).write_text(json.dumps(meta))
    hidden.rename(final)
    return meta


def public(meta: dict[str, Any]) -> dict[str, Any]:
    """What ``corpora()`` lists of a build's ``corpus.json``."""
    return {k: meta[k] for k in ("name", "documents", "dimensions", "model", "built")}


@dataclass
class Corpus:
    """A corpus this actor serves: its build's index (never written after loading) and its ``corpus.json``."""

    build: str
    index: VectorIndex
    meta: dict[str, Any]

    def info(self) -> dict[str, Any]:
        """What ``corpora()`` lists."""
        return public(self.meta)


class Shelf:
    """The corpora one actor serves, by name."""

    def __init__(self, model: str, dim: int, index_options: dict[str, Any]) -> None:
        self.model, self.dim = model, dim
        self.index_options = {k: v for k, v in index_options.items() if k in ("faiss_min_docs", "oversample")}
        self.corpora: dict[str, Corpus] = {}
        self.lock = threading.Lock()  # loads and drops; searches read a corpus without it

    def get(self, name: str, field: str = "corpus", op: str | None = None) -> Corpus:
        """The corpus ``name``; corpus_not_found naming it otherwise."""
        corpus = self.corpora.get(name)
        if corpus is None:
            known = ", ".join(sorted(self.corpora)) or "none"
            message = f"no corpus {name!r} (corpora: {known}); build it with corpus_build"
            raise CorpusNotFound(f"{field}: {message}", op=op, detail=[{"field": field, "message": message}])
        return corpus

    def load(self, name: str, build: str) -> dict[str, Any]:
        """Serve build ``build`` of corpus ``name`` from its files (replacing what this actor served as ``name``)."""
        folder = root() / check_name(name, "name", "corpus_load") / check_name(build, "build", "corpus_load")
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            message = f"corpus {name!r} has no build {build!r} under state_dir/corpora"
            raise CorpusNotFound(message, op="corpus_load", detail=[{"field": "build", "message": message}]) from None
        if meta.get("model") != self.model or meta.get("dimensions") != self.dim:
            raise InvalidConfig(
                f"options.model: corpus {name!r} was embedded by {meta.get('model')} ({meta.get('dimensions')} "
                f"dimensions); this pool embeds with {self.model} ({self.dim}): build it again",
                op="corpus_load",
            )
        index = VectorIndex(self.dim, **self.index_options)
        index.load(folder / INDEX, "build")
        index.prepare()
        with self.lock:
            self.corpora[name] = Corpus(build, index, meta)
        return Corpus(build, index, meta).info()

    def drop(self, name: str) -> dict[str, Any]:
        """Stop serving ``name`` and remove its files (another actor may have removed them already)."""
        check_name(name, "name", "corpus_drop")
        folder = root() / name
        with self.lock:
            held = self.corpora.pop(name, None)
        if held is None and not folder.exists():
            self.get(name, "name", "corpus_drop")  # raises corpus_not_found, naming the corpora there are
        shutil.rmtree(folder, onerror=_unless_gone)
        return {"name": name, "dropped": True}

    def listing(self) -> list[dict[str, Any]]:
        """Each corpus served here, by name."""
        return [self.corpora[name].info() for name in sorted(self.corpora)]


def remove_build(name: str, build: str) -> None:
    """Remove one build's folder (the one served before a rebuild switched to a new one)."""
    shutil.rmtree(root() / name / build, onerror=_unless_gone)


def _unless_gone(function: Any, path: str, info: Any) -> None:
    """rmtree's error hook: a file another actor removed first is fine; anything else is raised."""
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]
