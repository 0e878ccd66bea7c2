"""The retrieval pool's worker: embeddings, named corpora shared by the pool, and vector indexes in sessions.

    pools.yaml:  worker: workers.retrieval:Retrieval   options: {model: minilm, device: auto, batch_size: 64}

Stateless: ``embed``, ``embeddings`` (for the OpenAI route), ``info``. Named
corpora (``corpora.py``): ``corpus_build`` (a job: embeds once, on its actor,
writes the files under ``state_dir/corpora``, then makes every actor serve
them through the pool-wide remembered ``corpus_load``), ``corpora``,
``corpus_drop``, and ``search(corpus=...)`` in a session or not. In a session
(``ctx.state["index"]``, a :class:`VectorIndex` checkpointed after each call): ``add``, ``search``,
``delete``, ``size``, ``clear``, ``save``, ``load``. Paths given to ``save``
and ``load`` are relative to the pool's ``data_dir`` (a client can never name
a file outside it: :func:`~orchestrator.contract.confined_path`).

Every call is bounded before any work starts: at most ``max_inputs`` texts or
vectors, ``max_input_chars`` characters per text and ``max_k`` results per
query; a request past a bound is ``invalid_arguments`` naming the field and
the option.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ValidatorFunctionWrapHandler, WrapValidator

from orchestrator import Context, Worker, op
from orchestrator.contract import confined_path
from orchestrator.errors import InvalidConfig
from workers.retrieval import corpora
from workers.retrieval.corpora import CorpusDoc, check_name
from workers.retrieval.embedder import Embedder
from workers.retrieval.index import VectorIndex, bad, check_filter

Hits = dict[str, Any]


def _arrays_as_given(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A 2-D numeric numpy array passes as it is (in-process callers: no copy); anything else is lists."""
    if isinstance(value, np.ndarray):
        if value.ndim != 2 or value.dtype.kind not in "fiu":
            raise ValueError(f"expected a 2-D array of numbers, got shape {value.shape} of {value.dtype}")
        return value
    return handler(value)


# Precomputed embeddings: a (n, dim) numpy array in-process, lists of numbers over JSON.
Vectors = Annotated[list[list[float]], WrapValidator(_arrays_as_given)]
Matrix = np.ndarray[tuple[int, int], np.dtype[np.float32]]


class Retrieval(Worker):
    """Sentence embeddings (sentence-transformers; CUDA in fp16 when present) and session-scoped vector search."""

    def __init__(
        self,
        model: str = "minilm",
        device: str = "auto",
        batch_size: int = 64,
        threads: int | None = None,
        tokenizer_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
        faiss_min_docs: int = 20_000,
        oversample: int = 4,
        snapshot_min_docs: int = 10_000,
        data_dir: str = "~/.cache/orchestrator/retrieval",
        max_inputs: int = 2048,
        max_input_chars: int = 32_768,
        max_k: int = 1000,
        max_hits: int = 100_000,
        max_corpus_docs: int = 100_000,
        corpus_batch: int = 1024,
    ) -> None:
        """Options (pools.yaml ``options``):

        model: ``minilm`` (the bundled all-MiniLM-L6-v2), a local directory, or a Hugging Face hub id.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        batch_size: texts per forward pass when a call does not say (halved on ``gpu_oom`` when it does).
        threads: torch CPU threads (default: Ray's ``num_cpus`` for the actor, via OMP_NUM_THREADS).
        tokenizer_threads: threads tokenizing ahead of the model (default: 1 on CPU, CPUs - 1 up to 8 on CUDA).
        gpu_memory_fraction: cap on this process's share of the GPU (default: the pool's ``num_gpus``).
        faiss_min_docs: indexes this large search with FAISS (HNSW) and exact re-ranking, smaller ones exactly.
        oversample: FAISS candidates per result, re-ranked exactly.
        snapshot_min_docs: indexes this large are checkpointed as snapshot files, not inline.
        data_dir: the directory ``save``/``load`` paths (and snapshots) live under.
        max_inputs: texts (or vectors) per call, for ``embed``, ``embeddings``, ``add`` and ``search`` (OpenAI's 2048).
        max_input_chars: characters per text.
        max_k: results per query of ``search``.
        max_hits: results per ``search`` call (queries x ``k``), which bounds the answer's size.
        max_corpus_docs: documents per corpus (``corpus_build``).
        corpus_batch: documents ``corpus_build`` embeds per step (one progress event and checkpoint each).
        """
        for option, value in (
            ("batch_size", batch_size),
            ("max_inputs", max_inputs),
            ("max_input_chars", max_input_chars),
            ("max_k", max_k),
            ("max_hits", max_hits),
            ("max_corpus_docs", max_corpus_docs),
            ("corpus_batch", corpus_batch),
        ):
            if value < 1:
                raise InvalidConfig(f"options.{option}: must be >= 1, got {value}")
        if faiss_min_docs < 1 or oversample < 1:
            raise InvalidConfig("options.faiss_min_docs and options.oversample: must be >= 1")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.embedder = Embedder(model, device, batch_size, tokenizer_threads, gpu_memory_fraction)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.max_inputs, self.max_input_chars, self.max_k = max_inputs, max_input_chars, max_k
        self.max_hits = max_hits
        self.max_corpus_docs, self.corpus_batch = max_corpus_docs, corpus_batch
        self.index_options: dict[str, Any] = {
            "faiss_min_docs": faiss_min_docs,
            "oversample": oversample,
            "snapshot_min_docs": snapshot_min_docs,
            "snapshot_dir": str(self.data_dir / ".snapshots"),
        }
        self.shelf = corpora.Shelf(self.embedder.name, self.embedder.dim, self.index_options)

    def close(self) -> None:
        """Stop the tokenizer threads."""
        self.embedder.close()

    # ------------------------------------------------------------- stateless
    @op(idempotent=True)
    def info(self) -> dict[str, Any]:
        """The model (its names, dimension, max tokens), device, batch size, GPU memory fraction, and how many
        texts this actor has embedded (``texts_embedded``: documents and queries, since it started)."""
        embedder = self.embedder
        return {
            "model": embedder.name,
            "names": embedder.names(),
            "dim": embedder.dim,
            "max_seq_length": embedder.model.get_max_seq_length(),
            "device": embedder.device,
            "dtype": "float16" if embedder.device.startswith("cuda") else "float32",
            "batch_size": embedder.batch_size,
            "gpu_memory_fraction": embedder.memory_fraction,
            "texts_embedded": embedder.texts_embedded,
        }

    @op(idempotent=True)
    def embed(
        self,
        texts: list[str],
        normalize: bool = True,
        batch_size: int | None = None,
        encoding: Literal["float", "base64"] = "float",
    ) -> Matrix | list[str]:
        """One embedding per text: a float32 array of shape (texts, dim), or base64 of little-endian float32
        per text (OpenAI's format). The array travels through Ray's object store without copies; over
        HTTP it is JSON lists of floats."""
        vectors = self._encode(texts, "texts", normalize, batch_size)[0]
        if encoding == "base64":
            return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        return vectors

    @op(idempotent=True)
    def embeddings(self, texts: list[str], batch_size: int | None = None) -> dict[str, Any]:
        """``embed`` (normalized) for the OpenAI route: ``{"model", "embeddings" (an array), "tokens"}``;
        the route writes the array as floats or base64."""
        vectors, tokens = self._encode(texts, "texts", True, batch_size)
        return {"model": self.embedder.name, "embeddings": vectors, "tokens": tokens}

    # --------------------------------------------------------------- corpora
    def _check_build(self, args: dict[str, Any], orchestrator: Any) -> None:
        """At submit: a corpus name, and documents every one of which is fit to embed (nothing queued otherwise)."""
        check_name(args["name"])
        self._check_model(args.get("model"))
        self._documents(args.get("docs"), args.get("file_id"), orchestrator)

    @op(check=_check_build)
    def corpus_build(
        self,
        ctx: Context,
        name: str,
        docs: list[CorpusDoc] | None = None,
        file_id: str | None = None,
        model: str | None = None,
    ) -> Generator[dict[str, Any], None, dict[str, Any] | None]:
        """Build corpus ``name`` from ``docs`` (``[{"id", "text", "metadata"?}]``) or ``file_id`` (an uploaded
        JSONL file of such rows); run it as a job. Embeds once, here, ``corpus_batch`` documents per step (a
        progress event and a checkpoint each: a re-run embeds no finished step), writes the corpus under
        ``state_dir/corpora``, then has every actor serve it (``corpus_load``, remembered: actors that start
        later load the files, embedding nothing). Building a name again replaces it. Its last event and its
        result: ``{"name", "documents", "dimensions", "model", "built"}``. ``model``, when given, must name
        this pool's model (``"<pool>/<model>"`` or an alias): a pool embeds with one model, and a client that
        pins one is told, not served another. Needs ``limits.concurrency`` >= 2 (refused before embedding
        otherwise): the pool-wide load reaches this actor while the job still holds one of its threads."""
        self._check_model(model)
        rows = self._documents(docs, file_id, lambda: ctx.orchestrator)
        corpora.check_concurrency(ctx.orchestrator, ctx.pool)
        build = str((ctx.resume or {}).get("build") or (ctx.job_id or uuid.uuid4().hex)[:16])
        texts = [row.text for row in rows]
        vectors = corpora.embed_in_steps(ctx, build, texts, self.embedder.encode, self.corpus_batch)
        if vectors is None:  # cancelled
            return None
        meta = corpora.write_build(name, build, vectors, rows, self.embedder.name)
        previous = self.shelf.corpora.get(name)
        ctx.orchestrator.call(ctx.pool, "corpus_load", name=name, build=build)  # every actor, now and later
        if previous is not None and previous.build != build:
            corpora.remove_build(name, previous.build)
        if ctx.job_id is not None:
            shutil.rmtree(ctx.job_dir / corpora.PARTS, ignore_errors=True)
        info = corpora.public(meta)
        yield {"corpus": info}
        return info

    @op(remember="corpus:{name}", idempotent=True)
    def corpus_load(self, name: str, build: str) -> dict[str, Any]:
        """Serve build ``build`` of corpus ``name`` from its files, on every actor of the pool and on actors that
        start later (``corpus_build`` calls it; nothing is embedded). Returns the corpus's ``corpora()`` entry."""
        return self.shelf.load(name, build)

    @op(idempotent=True)
    def corpora(self) -> list[dict[str, Any]]:
        """Every corpus this pool serves: ``{"name", "documents", "dimensions", "model", "built"}``, by name."""
        return self.shelf.listing()

    @op(forget="corpus:{name}")
    def corpus_drop(self, name: str) -> dict[str, Any]:
        """Stop serving corpus ``name`` on every actor (and on later ones) and remove its files;
        an unknown name is corpus_not_found."""
        return self.shelf.drop(name)

    # -------------------------------------------------------------- sessions
    @op(session=True)
    def add(
        self,
        ctx: Context,
        docs: list[str] | None = None,
        ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
        vectors: Vectors | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """Add documents (embedded here) or precomputed ``vectors`` (a (n, dim) array, or lists) to the
        session's index.

        ``ids`` default to random hex ids; an existing id is replaced. Returns the ids and the new size.
        """
        if docs is None and vectors is None:
            raise bad("docs", "give docs (texts to embed) or vectors (precomputed embeddings)", "add")
        if docs is not None:
            self._check_texts(docs, "docs")  # stored even when vectors are given, so bounded as well
        what, count = ("docs", len(docs)) if docs is not None else ("vectors", len(vectors))  # type: ignore[arg-type]
        for name, given in (("ids", ids), ("metadata", metadata), ("vectors", vectors)):
            if given is not None and len(given) != count:  # checked before the index changes: add is all or nothing
                raise bad(name, f"has {len(given)} items for {count} {what}", "add")
        if vectors is not None:
            matrix = self._matrix(vectors, "vectors")
        else:
            matrix = self._encode(docs or [], "docs", True, batch_size)[0]
        index = self._index(ctx)
        added = index.add(matrix, docs if docs is not None else [None] * count, ids, metadata)
        return {"ids": added, "size": len(index)}

    @op(session="optional")
    def search(
        self,
        ctx: Context,
        corpus: str | None = None,
        query: str | None = None,
        queries: list[str] | None = None,
        vectors: Vectors | None = None,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> Hits:
        """The ``k`` best documents of ``corpus`` (a named corpus, in a session or not) or, without it, of the
        session's own index, for ``query`` (one hit list) or for each of ``queries``/``vectors`` (``results``).

        A hit list is ``{"ids", "scores", "docs", "metadata"}``, best first; ``note``
        says when fewer than ``k`` came back. ``filter`` matches metadata:
        ``{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}``.
        ``exact=True`` skips FAISS.
        """
        given = [name for name, v in (("query", query), ("queries", queries), ("vectors", vectors)) if v is not None]
        if len(given) != 1:
            which = "none" if not given else " and ".join(given)
            raise bad("query", f"give exactly one of query, queries or vectors (got {which})", "search")
        if k <= 0:
            raise bad("k", f"must be a positive number of results, got {k}", "search")
        if k > self.max_k:
            raise bad("k", f"{k} results; this pool returns at most {self.max_k} per query (options.max_k)", "search")
        count = 1 if query is not None else len(queries if queries is not None else vectors)  # type: ignore[arg-type]
        if count * k > self.max_hits:
            message = f"{count} queries x k={k} = {count * k} results; at most {self.max_hits} (options.max_hits)"
            raise bad("k", message, "search")
        if corpus is not None:
            index = self.shelf.get(corpus, "corpus", "search").index  # before embedding: an unknown one costs nothing
        elif ctx.session_id is None:
            message = "name the corpus to search (corpus=...); a session's own index is searched inside its session"
            raise bad("corpus", message, "search")
        else:
            index = self._index(ctx)
        if filter:
            check_filter(filter)
        if vectors is not None:
            matrix = self._matrix(vectors, "vectors")
        else:
            texts = [query] if query is not None else queries
            matrix = self._encode(texts or [], "queries" if queries is not None else "query", True, None)[0]
        found = index.search(matrix, k, filter, self.embedder.device, exact)
        lists = [self._hits(index, pairs) for pairs in found]
        note = self._note(k, len(index), found, bool(filter))
        result: Hits = lists[0] if query is not None else {"results": lists}
        if note:
            result["note"] = note
        return result

    @op(session=True)
    def delete(self, ctx: Context, ids: list[str]) -> dict[str, int]:
        """Remove documents by id. Any unknown id is an error naming it, and then nothing is removed."""
        if not ids:
            raise bad("ids", "give at least one id to delete", "delete")
        index = self._index(ctx)
        return {"deleted": index.delete(ids), "size": len(index)}

    @op(session=True)
    def size(self, ctx: Context) -> int:
        """How many documents the session's index holds."""
        return len(self._index(ctx))

    @op(session=True)
    def clear(self, ctx: Context) -> int:
        """Drop every document; returns how many there were."""
        index = self._index(ctx)
        count = len(index)
        index.clear()
        return count

    @op(session=True)
    def save(self, ctx: Context, path: str) -> dict[str, Any]:
        """Save the session's index under the pool's ``data_dir`` (a directory: vectors.npy + rows.json)."""
        return {**self._index(ctx).save(confined_path(self.data_dir, path, "path", "save")), "path": path}

    @op(session=True)
    def load(self, ctx: Context, path: str) -> dict[str, Any]:
        """Replace the session's index with one saved under ``data_dir``; returns its size."""
        index = self._index(ctx)
        index.load(confined_path(self.data_dir, path, "path", "load"))
        return {"path": path, "size": len(index)}

    # ------------------------------------------------------------- internals
    def _check_model(self, model: str | None) -> None:
        """``model`` (optional) names this pool's embedding model: ``"<pool>/<name>"`` or one of its names."""
        names = self.embedder.names()
        if model is not None and model.rsplit("/", 1)[-1] not in names:
            message = f"{model!r} is not this pool's model; it embeds with {self.embedder.name} ({', '.join(names)})"
            raise bad("model", message, "corpus_build")

    def _documents(self, docs: list[CorpusDoc] | None, file_id: str | None, handle: Any) -> list[CorpusDoc]:
        return corpora.documents(docs, file_id, handle, self.max_corpus_docs, self.max_input_chars)

    def _encode(self, texts: list[str], field: str, normalize: bool, batch_size: int | None) -> tuple[np.ndarray, int]:
        """Embeddings and the tokens read; bad texts or a bad batch size are errors naming the field."""
        self._check_texts(texts, field)
        if batch_size is not None and batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {batch_size}")
        return self.embedder.encode_counted(texts, normalize, batch_size)

    def _check_texts(self, texts: list[str], field: str) -> None:
        """At least one text, at most ``max_inputs``, each at most ``max_input_chars`` (``field.i`` names it)."""
        if not texts:
            raise bad(field, "must hold at least one string, got an empty list")
        self._check_count(len(texts), field)
        for i, text in enumerate(texts):
            if len(text) > self.max_input_chars:
                where = field if field == "query" else f"{field}.{i}"  # a single query is not a list
                limit = f"this pool takes at most {self.max_input_chars} per text (options.max_input_chars)"
                raise bad(where, f"{len(text)} characters; {limit}")

    def _matrix(self, vectors: list[list[float]] | np.ndarray, field: str) -> np.ndarray:
        if len(vectors) == 0:
            raise bad(field, "must hold at least one vector, got an empty list")
        self._check_count(len(vectors), field)
        dim = self.embedder.dim
        if isinstance(vectors, np.ndarray):  # 2-D (checked by the type): one width for all rows
            if vectors.shape[1] != dim:
                raise bad(field, f"expected {dim} columns (the model's dimension), got shape {vectors.shape}")
        else:
            for i, row in enumerate(vectors):
                if len(row) != dim:
                    raise bad(f"{field}.{i}", f"expected {dim} numbers (the model's dimension), got {len(row)}")
        matrix = np.asarray(vectors, dtype=np.float32)  # no copy for a float32 array
        if not np.isfinite(matrix).all():
            raise bad(field, "holds NaN or infinite numbers")
        return matrix

    def _check_count(self, count: int, field: str) -> None:
        if count > self.max_inputs:
            raise bad(field, f"{count} inputs; this pool takes at most {self.max_inputs} per call (options.max_inputs)")

    def _index(self, ctx: Context) -> VectorIndex:
        index = ctx.state.get("index")
        if not isinstance(index, VectorIndex):
            index = ctx.state["index"] = VectorIndex(self.embedder.dim, **self.index_options)
        return index

    @staticmethod
    def _hits(index: VectorIndex, pairs: list[tuple[int, float]]) -> Hits:
        rows = [r for r, _ in pairs]
        return {
            "ids": [index.ids[r] for r in rows],
            "scores": [s for _, s in pairs],
            "docs": [index.docs[r] for r in rows],
            "metadata": [index.metadata[r] for r in rows],
        }

    @staticmethod
    def _note(k: int, size: int, found: list[list[tuple[int, float]]], filtered: bool) -> str | None:
        fewest = min(len(f) for f in found)
        if fewest >= k:
            return None
        if size < k:
            return f"k={k} is larger than the index ({size} documents): returned {fewest}"
        return f"only {fewest} documents {'match the filter' if filtered else 'were found'} (k={k})"
