"""The retrieval worker without Ray: the real MiniLM, the vector index (exact and FAISS), bad input, CUDA."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the retrieval extra is not installed")
pytest.importorskip("faiss", reason="faiss-cpu is not installed")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from orchestrator.contract import Context
from orchestrator.errors import InvalidArguments, InvalidConfig
from workers.retrieval import Retrieval
from workers.retrieval import index as index_module
from workers.retrieval.embedder import bundled_minilm
from workers.retrieval.index import VectorIndex

TEXTS = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "x",
    "a considerably longer sentence that goes on " * 20,
]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retrieval]:
    w = Retrieval(device="cpu", batch_size=4, data_dir=str(tmp_path_factory.mktemp("data")))
    yield w
    w.close()


def session() -> Context:
    return Context(pool="ret", op="test", session_id="s1")


def field_of(exc: pytest.ExceptionInfo[InvalidArguments]) -> str:
    return str(exc.value.detail[0]["field"])


def clustered(n: int, dim: int = 384, centers: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors in overlapping clusters, like real embeddings (uniform random ones are no real corpus)."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim)).astype(np.float32)
    vectors = middle[rng.integers(0, centers, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# ------------------------------------------------------------- embeddings
def test_embeddings_match_bare_sentence_transformers(worker: Retrieval) -> None:
    from sentence_transformers import SentenceTransformer

    bare = SentenceTransformer(str(bundled_minilm()), device="cpu")
    ours = np.array(worker.embed(TEXTS * 3))
    theirs = bare.encode(TEXTS * 3, batch_size=4, normalize_embeddings=True)
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.999, cosine
    # normalize=False skips the model's Normalize layer; bare encode() cannot, so compare against the layer's input
    raw = np.array(worker.embed(TEXTS, normalize=False))
    assert np.linalg.norm(raw, axis=1).min() > 1.5
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), theirs[: len(TEXTS)], atol=1e-4)


def test_similar_sentences_score_higher(worker: Retrieval) -> None:
    cat, kitten, revenue = np.array(worker.embed(TEXTS[:3]))
    assert cat @ kitten > cat @ revenue + 0.2
    encoded = worker.embed(["hello"], encoding="base64")
    assert np.allclose(np.frombuffer(__import__("base64").b64decode(encoded[0]), "<f4"), worker.embed(["hello"])[0])


def test_bad_embed_input_names_the_field(worker: Retrieval) -> None:
    with pytest.raises(InvalidArguments) as exc:
        worker.embed([])
    assert field_of(exc) == "texts"
    with pytest.raises(InvalidArguments) as exc:
        worker.embed(["a"], batch_size=0)
    assert field_of(exc) == "batch_size"
    spec = type(worker).embed.__orchestrator_op__  # type: ignore[attr-defined]
    with pytest.raises(InvalidArguments, match=r"texts\.1"):
        spec.validate({"texts": ["ok", 3]})


def test_model_path_that_does_not_exist_names_the_option() -> None:
    with pytest.raises(InvalidConfig, match=r"options\.model: the model path '/no/such/model' does not exist"):
        Retrieval(model="/no/such/model", device="cpu")
    with pytest.raises(InvalidConfig, match=r"options\.device"):
        Retrieval(device="tpu")


def test_model_loads_by_local_path(worker: Retrieval) -> None:
    by_path = Retrieval(model=str(bundled_minilm()), device="cpu")
    assert by_path.info()["dim"] == 384
    assert np.allclose(by_path.embed(["same text"]), worker.embed(["same text"]), atol=1e-5)


# ----------------------------------------------------------------- index
def test_faiss_recall_at_10_against_exact_search() -> None:
    vectors = clustered(20_200)
    corpus, queries = vectors[:20_000], vectors[20_000:]  # held-out queries from the same distribution
    index = VectorIndex(384, faiss_min_docs=10_000)
    index.add(corpus, [None] * len(corpus), [str(i) for i in range(len(corpus))])
    assert index.uses_faiss
    approx = index.search(queries, 10)
    exact = index.search(queries, 10, exact=True)
    recall = np.mean([len({r for r, _ in a} & {r for r, _ in e}) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall
    # re-ranked candidates carry their exact scores
    assert all(abs(a[0][1] - float(corpus[a[0][0]] @ q)) < 1e-4 for a, q in zip(approx, queries, strict=True))


def test_filters_delete_and_k_beyond_the_index(worker: Retrieval) -> None:
    ctx = session()
    meta: list[dict[str, Any]] = [{"kind": "pet", "year": 2020}, {"kind": "pet", "year": 2024}, {"kind": "money"}]
    added = worker.add(ctx, docs=TEXTS[:3], ids=["cat", "kitten", "revenue"], metadata=meta)
    assert added == {"ids": ["cat", "kitten", "revenue"], "size": 3}
    hits = worker.search(ctx, query="a small cat", k=2)
    assert hits["ids"] == ["kitten", "cat"] or hits["ids"] == ["cat", "kitten"]
    assert "note" not in hits
    assert worker.search(ctx, query="a small cat", k=3, filter={"kind": "money"})["ids"] == ["revenue"]
    assert worker.search(ctx, query="cat", filter={"year": {"$gte": 2021}})["ids"] == ["kitten"]
    assert worker.search(ctx, query="cat", filter={"kind": {"$in": ["money"]}})["ids"] == ["revenue"]
    big = worker.search(ctx, query="cat", k=50)
    assert len(big["ids"]) == 3 and "k=50 is larger than the index (3 documents)" in big["note"]
    many = worker.search(ctx, queries=["cat", "money"], k=1)
    assert [r["ids"] for r in many["results"]] == [["cat"], ["revenue"]]
    with pytest.raises(InvalidArguments) as exc:
        worker.delete(ctx, ["cat", "ghost"])
    assert field_of(exc) == "ids" and "'ghost'" in str(exc.value) and "nothing was deleted" in str(exc.value)
    assert worker.size(ctx) == 3
    assert worker.delete(ctx, ["cat"]) == {"deleted": 1, "size": 2}
    assert "cat" not in worker.search(ctx, query="cat")["ids"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": -3}, "k"),
        ({}, "query"),
        ({"query": "x", "queries": ["y"]}, "query"),
        ({"queries": []}, "queries"),
        ({"vectors": [[1.0, 2.0]]}, "vectors.0"),
        ({"query": "x", "filter": {"year": {"$gt_typo": 1}}}, "filter.year"),
    ],
)
def test_bad_search_input_names_the_field(worker: Retrieval, args: dict[str, Any], field: str) -> None:
    ctx = session()
    worker.add(ctx, docs=["one doc"])
    with pytest.raises(InvalidArguments) as exc:
        worker.search(ctx, **args)
    assert field_of(exc) == field


def test_add_checks_lengths_and_needs_something(worker: Retrieval) -> None:
    with pytest.raises(InvalidArguments) as exc:
        worker.add(session(), docs=["a", "b"], ids=["only-one"])
    assert field_of(exc) == "ids"
    with pytest.raises(InvalidArguments) as exc:
        worker.add(session())
    assert field_of(exc) == "docs"
    with pytest.raises(InvalidArguments) as exc:
        worker.add(session(), docs=[])
    assert field_of(exc) == "docs"


def test_add_with_vectors_checks_ids_before_changing_the_index(worker: Retrieval) -> None:
    ctx = session()
    worker.add(ctx, docs=["one doc"], ids=["one"])
    with pytest.raises(InvalidArguments) as exc:
        worker.add(ctx, vectors=[ROW, ROW], ids=["only-one"])
    assert field_of(exc) == "ids"
    assert worker.size(ctx) == 1 and worker.search(ctx, query="doc")["ids"] == ["one"]


LONG = "y" * 32_769  # one past the default options.max_input_chars
MANY = ["x"] * 2049  # one past the default options.max_inputs (OpenAI's 2048)
ROW = [0.0] * 384


@pytest.fixture()
def embedded(worker: Retrieval, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts each call handed the (real) model."""
    seen: list[int] = []
    real = worker.embedder.encode_counted

    def recording(texts: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append(len(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(worker.embedder, "encode_counted", recording)
    return seen


@pytest.mark.parametrize(
    ("op", "args", "field", "option"),
    [
        ("embed", {"texts": MANY}, "texts", "max_inputs"),
        ("embed", {"texts": ["ok", LONG]}, "texts.1", "max_input_chars"),
        ("embeddings", {"texts": MANY}, "texts", "max_inputs"),
        ("embeddings", {"texts": [LONG]}, "texts.0", "max_input_chars"),
        ("add", {"docs": MANY}, "docs", "max_inputs"),
        ("add", {"docs": ["ok", "fine", LONG]}, "docs.2", "max_input_chars"),
        ("add", {"docs": [LONG], "vectors": [ROW]}, "docs.0", "max_input_chars"),  # stored, so bounded too
        ("add", {"vectors": [ROW] * 2049}, "vectors", "max_inputs"),
        ("search", {"query": LONG}, "query", "max_input_chars"),
        ("search", {"queries": MANY}, "queries", "max_inputs"),
        ("search", {"queries": ["ok", LONG]}, "queries.1", "max_input_chars"),
        ("search", {"vectors": [ROW] * 2049}, "vectors", "max_inputs"),
        ("search", {"query": "ok", "k": 1001}, "k", "max_k"),
        ("search", {"queries": ["ok"] * 101, "k": 1000}, "k", "max_hits"),
    ],
)
def test_requests_past_the_pool_limits_are_refused_before_any_work(
    worker: Retrieval, embedded: list[int], op: str, args: dict[str, Any], field: str, option: str
) -> None:
    ctx = session()
    worker.add(ctx, docs=["one doc"], ids=["one"])
    assert embedded == [1]
    method = getattr(worker, op)
    with pytest.raises(InvalidArguments) as exc:
        method(ctx, **args) if op in ("add", "search") else method(**args)
    assert field_of(exc) == field and f"(options.{option})" in exc.value.message, exc.value.message
    assert embedded == [1] and worker.size(ctx) == 1  # nothing embedded, nothing added
    assert worker.search(ctx, query="ok", k=1000)["ids"] == ["one"]  # at the limits: served


def test_limits_must_be_positive() -> None:
    for option in ("max_inputs", "max_input_chars", "max_k"):
        with pytest.raises(InvalidConfig, match=rf"options\.{option}: must be >= 1"):
            Retrieval(device="cpu", **{option: 0})


def test_save_load_round_trip_stays_under_data_dir(worker: Retrieval) -> None:
    ctx = session()
    worker.add(ctx, docs=TEXTS[:3], ids=["a", "b", "c"], metadata=[{"n": 1}, {"n": 2}, {"n": 3}])
    assert worker.save(ctx, "indexes/one")["size"] == 3
    before = worker.search(ctx, query="cat", k=3)
    other = session()
    assert worker.load(other, "indexes/one") == {"path": "indexes/one", "size": 3}
    assert worker.search(other, query="cat", k=3) == before
    worker.save(ctx, "indexes/one")  # overwriting is fine
    for path in ("/etc/passwd", "../outside", "indexes/../../x", ".snapshots/x"):
        with pytest.raises(InvalidArguments) as exc:
            worker.save(ctx, path)
        assert field_of(exc) == "path"
    with pytest.raises(InvalidArguments, match="no saved index"):
        worker.load(other, "indexes/missing")


def test_save_and_load_never_touch_files_outside_data_dir(worker: Retrieval, tmp_path: Path) -> None:
    ctx = session()
    worker.add(ctx, docs=TEXTS[:2], ids=["a", "b"])
    snapshot = worker.data_dir / ".snapshots" / "someone-elses"
    snapshot.mkdir(parents=True)
    (snapshot / "rows.json").write_text("theirs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (worker.data_dir / "escape").symlink_to(outside)
    hostile = ["x/../.snapshots/someone-elses", ".snapshots/someone-elses", "escape/stolen", str(outside / "abs")]
    for path in hostile:
        for op in (worker.save, worker.load):
            with pytest.raises(InvalidArguments) as exc:
                op(ctx, path)
            assert field_of(exc) == "path" and exc.value.op == op.__name__, (path, exc.value)
    assert list(outside.iterdir()) == [] and not (worker.data_dir / "x").exists()
    assert [p.name for p in snapshot.iterdir()] == ["rows.json"] and (snapshot / "rows.json").read_text() == "theirs"
    assert worker.size(ctx) == 2  # the session's own index is untouched


def integer_corpus(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors whose scores float32 computes exactly in any order (small integers plus row / 4096: distinct),
    so scoring in blocks must give bit-identical results."""
    rng = np.random.default_rng(seed)
    docs = np.hstack([rng.integers(-3, 4, (n, 7)), np.arange(n)[:, None]]).astype(np.float32)
    asks = np.hstack([rng.integers(-3, 4, (queries, 7)), np.full((queries, 1), 1 / 4096)]).astype(np.float32)
    return docs, asks


@pytest.mark.parametrize("where", [None, {"even": True}])
def test_exact_search_scores_in_bounded_blocks_with_identical_results(
    monkeypatch: pytest.MonkeyPatch, where: dict[str, Any] | None
) -> None:
    import torch

    docs, queries = integer_corpus(2_000, 100)
    index = VectorIndex(8)
    index.add(docs, [None] * len(docs), metadata=[{"even": i % 2 == 0} for i in range(len(docs))])
    whole = index.search(queries, 10, where, exact=True)  # 100 x 2000 scores: one block by default
    budget = 7 * 2_000 * 4  # room for 7 queries' scores
    monkeypatch.setattr(index_module, "SCORE_BLOCK_BYTES", budget)
    shapes: list[tuple[int, ...]] = []
    real_topk = torch.topk

    def recording_topk(scores: Any, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(scores.shape))
        return real_topk(scores, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    blocked = index.search(queries, 10, where, exact=True)
    assert blocked == whole
    width = 2_000 if where is None else 1_000  # the filter scores only the matching rows
    assert [rows for rows, _ in shapes] == [budget // (4 * width)] * (len(shapes) - 1) + [shapes[-1][0]]
    assert sum(rows for rows, _ in shapes) == 100 and max(rows * cols * 4 for rows, cols in shapes) <= budget


def test_faiss_search_asks_for_candidates_in_bounded_blocks_with_identical_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faiss

    docs, queries = integer_corpus(2_000, 60, seed=1)
    index = VectorIndex(8, faiss_min_docs=1_000, oversample=4)
    index.add(docs, [None] * len(docs))
    whole = index.search(queries, 10)
    assert index.uses_faiss
    want = 10 * 4
    budget = 5 * want * 12  # 5 queries' candidates (a float32 score and an int64 label each)
    monkeypatch.setattr(index_module, "SCORE_BLOCK_BYTES", budget)
    asked: list[int] = []
    real_search = faiss.IndexIVFFlat.search

    def recording_search(self: Any, x: np.ndarray, k: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(len(x) * k * 12)
        return real_search(self, x, k, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexIVFFlat, "search", recording_search)
    assert index.search(queries, 10) == whole
    assert len(asked) == 12 and max(asked) <= budget


def test_large_index_pickles_as_a_snapshot(tmp_path: Path) -> None:
    index = VectorIndex(384, faiss_min_docs=100, snapshot_min_docs=500, snapshot_dir=str(tmp_path))
    corpus = clustered(1_000, seed=3)
    index.add(
        corpus, [f"doc {i}" for i in range(1_000)], [str(i) for i in range(1_000)], [{"i": i} for i in range(1_000)]
    )
    blob = pickle.dumps({"index": index})
    assert len(blob) < 20_000  # the rows went to the snapshot file, not the pickle
    restored = pickle.loads(blob)["index"]
    assert restored.ids == index.ids and restored.docs == index.docs and restored.metadata == index.metadata
    assert np.array_equal(restored.matrix(), index.matrix())
    assert restored.search(corpus[:3], 5) == index.search(corpus[:3], 5)
    small = VectorIndex(384, snapshot_min_docs=500, snapshot_dir=str(tmp_path))
    small.add(corpus[:10], [None] * 10)
    assert np.array_equal(pickle.loads(pickle.dumps(small)).matrix(), corpus[:10])


# ------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine: the CUDA path did not run"
)


@cuda
def test_cuda_embeddings_match_cpu_and_memory_fraction_is_set(worker: Retrieval) -> None:
    import torch

    gpu = Retrieval(device="cuda", gpu_memory_fraction=0.25)
    assert gpu.info()["dtype"] == "float16" and gpu.info()["gpu_memory_fraction"] == 0.25
    ours, cpu = np.array(gpu.embed(TEXTS * 20)), np.array(worker.embed(TEXTS * 20))
    assert ((ours * cpu).sum(axis=1)).min() >= 0.999
    free, total = torch.cuda.mem_get_info()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")  # past the 25% cap
    del free


@cuda
def test_cuda_oom_halves_the_batch_through_the_host() -> None:
    """A tiny memory fraction makes big batches run out of memory; the WorkerHost retries with half the batch."""
    from orchestrator.runtime.host import WorkerHost

    spec = {"worker": "workers.retrieval:Retrieval", "options": {"device": "cuda", "gpu_memory_fraction": 0.004}}
    host = WorkerHost("ret", 0, 0, spec, "ns", "coordinator")
    assert host.init_error is None, host.init_error
    texts = ["a long sentence about nothing in particular " * 12] * 4096
    out = host.call(("embed", {"texts": texts, "batch_size": 4096}, None, None, "test", ""))
    assert isinstance(out, list) and len(out) == 4096, out
    assert host.worker is not None and host.worker.embedder.last_batch_size < 4096  # type: ignore[attr-defined]


# ------------------------------------------------------------------- SDK
def scripted_gateway(seen: list[tuple[str, str, Any]]) -> Any:
    """A MockTransport handler that records each request and answers like the gateway."""
    import json

    import httpx

    def handle(request: Any) -> Any:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/v1/pools/retrieval":
            return httpx.Response(200, json={"name": "retrieval", "ops": {"embed": {"idempotent": True}}})
        if path == "/v1/sessions":
            return httpx.Response(201, json={"id": "s1", "pool": "retrieval", "slot": 0})
        if path.endswith("/ops/embed"):
            return httpx.Response(200, json={"result": [[0.5] * 3 for _ in body["texts"]]})
        if path.endswith("/ops/search"):
            return httpx.Response(
                200, json={"result": {"ids": ["a"], "scores": [1.0], "docs": [None], "metadata": [{}]}}
            )
        if path.endswith("/ops/size"):
            return httpx.Response(200, json={"result": 1})
        return httpx.Response(200, json={"result": {"ids": ["a"], "size": 1}, "id": "s1", "closed": True})

    return handle


def test_sdk_embed_and_retrieval_session_requests() -> None:
    import asyncio

    import httpx

    from orchestrator.client import AsyncClient, Client

    seen: list[tuple[str, str, Any]] = []
    with Client("http://gw.test", transport=httpx.MockTransport(scripted_gateway(seen))) as client:
        assert client.embed("one") == [[0.5, 0.5, 0.5]]
        with client.retrieval() as index:
            index.add(["doc"], ids=["a"])
            assert index.search("q", k=1, filter={"kind": "x"})["ids"] == ["a"]
            assert index.size() == 1
    posted = [(path, body) for method, path, body in seen if method == "POST"]
    assert posted == [
        ("/v1/pools/retrieval/ops/embed", {"texts": ["one"], "normalize": True}),
        ("/v1/sessions", {"pool": "retrieval", "ttl_s": None}),
        ("/v1/sessions/s1/ops/add", {"docs": ["doc"], "ids": ["a"]}),
        ("/v1/sessions/s1/ops/search", {"query": "q", "k": 1, "filter": {"kind": "x"}}),
        ("/v1/sessions/s1/ops/size", {}),
    ]
    assert seen[-1][:2] == ("DELETE", "/v1/sessions/s1")

    async def run_async() -> None:
        seen.clear()
        transport = httpx.MockTransport(scripted_gateway(seen))
        async with AsyncClient("http://gw.test", transport=transport) as client:
            assert await client.embed(["a", "b"], batch_size=8) == [[0.5] * 3] * 2
            async with await client.retrieval() as index:
                assert (await index.search(queries=["q"], k=2))["ids"] == ["a"]
        assert (
            "POST",
            "/v1/pools/retrieval/ops/embed",
            {"texts": ["a", "b"], "normalize": True, "batch_size": 8},
        ) in seen

    asyncio.run(run_async())
