"""The retrieval pool on a real local Ray, through the in-process API, the SDK and a real gateway (openai client)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the retrieval extra is not installed")
pytest.importorskip("faiss", reason="faiss-cpu is not installed")

import orchestrator
from orchestrator import errors
from orchestrator.client import Client
from tests.conftest import GatewayProcess, Start, actors, kill_and_wait_restart

POOL = "ret"  # not "retrieval": that name would make Ray build envs/retrieval/requirements.txt into a new env
TEXTS = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by twelve percent."]
DOCS = [
    ("cat", "Cats purr when they are content.", {"kind": "pet", "year": 2020}),
    ("dog", "Dogs bark at the mail carrier.", {"kind": "pet", "year": 2024}),
    ("stocks", "The stock market fell sharply on Monday.", {"kind": "money", "year": 2024}),
]


def retrieval_pool(data_dir: Path) -> dict[str, Any]:
    return {
        "worker": "workers.retrieval:Retrieval",
        "size": 1,
        "resources": {"num_cpus": 1},
        "limits": {"concurrency": 2, "call_timeout_s": 120},
        "sessions": {"checkpoint": "after_call"},
        # snapshot_min_docs: small, so the SIGKILL test restores a snapshot-file checkpoint too
        "options": {"device": "cpu", "batch_size": 16, "data_dir": str(data_dir), "snapshot_min_docs": 100},
        "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retrieval-data")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, data_dir: Path) -> orchestrator.Orchestrator:
    return start_orchestrator({POOL: retrieval_pool(data_dir)})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


def cosine(a: Any, b: Any) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (x * y).sum(axis=-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)  # type: ignore[no-any-return]


def fill(session: Any) -> None:
    ids, docs, meta = (list(column) for column in zip(*DOCS, strict=True))
    assert session.call("add", docs=docs, ids=ids, metadata=meta) == {"ids": ids, "size": 3}


def invalid_field(exc: pytest.ExceptionInfo[errors.InvalidArguments]) -> str:
    return str(exc.value.detail[0]["field"])


def test_embed_through_the_pool(orch: orchestrator.Orchestrator) -> None:
    cat, kitten, revenue = np.array(orch.call(POOL, "embed", texts=TEXTS))
    assert cat.shape == (384,) and abs(np.linalg.norm(cat) - 1) < 1e-5
    assert cat @ kitten > cat @ revenue + 0.2
    info = orch.call(POOL, "info")
    assert info["model"] == "all-MiniLM-L6-v2" and info["device"] == "cpu" and info["dim"] == 384


def test_in_process_embeddings_are_arrays_read_without_copies_and_json_lists_over_http(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    from sentence_transformers import SentenceTransformer

    from workers.retrieval.embedder import bundled_minilm

    texts = [f"{text} ({i})" for i in range(40) for text in TEXTS]  # 120 x 384 float32: past Ray's inline size
    vectors = orch.call(POOL, "embed", texts=texts)
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (120, 384)
    assert not vectors.flags.writeable  # a view of Ray's object store, not a copy (nor lists of floats)
    bare = SentenceTransformer(str(bundled_minilm()), device="cpu").encode(texts, normalize_embeddings=True)
    assert cosine(vectors, bare).min() >= 0.999
    over_http = httpx.post(f"{gateway.url}/v1/pools/{POOL}/ops/embed", json={"texts": texts[:3]}, timeout=60)
    rows = over_http.json()["result"]
    assert over_http.status_code == 200 and isinstance(rows[0], list) and len(rows) == 3
    assert np.array_equal(np.asarray(rows, dtype=np.float32), vectors[:3])  # float32 written exactly
    openai_body = {"model": f"{POOL}/minilm", "input": texts[:3]}
    data = httpx.post(f"{gateway.url}/v1/embeddings", json=openai_body, timeout=60).json()["data"]
    assert np.array_equal(np.asarray([d["embedding"] for d in data], dtype=np.float32), vectors[:3])


def test_session_takes_arrays_as_vectors(orch: orchestrator.Orchestrator) -> None:
    vectors = orch.call(POOL, "embed", texts=[doc for _, doc, _ in DOCS])
    with orch.session(POOL) as index:
        assert index.call("add", vectors=vectors, ids=[i for i, _, _ in DOCS])["size"] == 3
        queries = orch.call(POOL, "embed", texts=["a purring kitten", "markets"])
        by_array = index.call("search", vectors=queries, k=1)
        assert [r["ids"] for r in by_array["results"]] == [["cat"], ["stocks"]]
        assert index.call("search", vectors=queries.tolist(), k=1) == by_array
        bad = [
            (queries[0], "vectors"),  # one vector, not a matrix
            (np.zeros((2, 5), np.float32), "vectors"),  # not the model's dimension
            (np.full((1, 384), np.nan, np.float32), "vectors"),
            (np.array([["a"] * 384]), "vectors"),
        ]
        for matrix, field in bad:
            with pytest.raises(errors.InvalidArguments) as exc:
                index.call("add", vectors=matrix)
            assert invalid_field(exc) == field, (matrix.shape, exc.value)
        assert index.call("size") == 3


def test_session_index_search_filter_delete(orch: orchestrator.Orchestrator) -> None:
    with orch.session(POOL) as index:
        fill(index)
        hits = index.call("search", query="a purring kitten", k=2)
        assert hits["ids"][0] == "cat" and hits["docs"][0] == DOCS[0][1] and hits["metadata"][0] == DOCS[0][2]
        assert hits["scores"] == sorted(hits["scores"], reverse=True)
        assert index.call("search", query="animals", filter={"kind": "money"})["ids"] == ["stocks"]
        assert index.call("search", query="animals", k=3, filter={"year": {"$gte": 2021}})["ids"][0] == "dog"
        more = index.call("search", query="cat", k=10)
        assert len(more["ids"]) == 3 and "larger than the index (3 documents)" in more["note"]
        with pytest.raises(errors.InvalidArguments) as exc:
            index.call("delete", ids=["cat", "ghost"])
        assert invalid_field(exc) == "ids" and "ghost" in exc.value.message
        assert index.call("size") == 3
        assert index.call("delete", ids=["cat"]) == {"deleted": 1, "size": 2}
        assert "cat" not in index.call("search", query="a purring kitten")["ids"]


def test_two_sessions_never_see_each_others_documents(orch: orchestrator.Orchestrator) -> None:
    with orch.session(POOL) as first, orch.session(POOL) as second:
        first.call("add", docs=["only in the first session"], ids=["mine"])
        second.call("add", docs=["only in the second session"], ids=["yours"])
        assert first.call("search", query="session", k=5)["ids"] == ["mine"]
        assert second.call("search", query="session", k=5)["ids"] == ["yours"]
        with pytest.raises(errors.InvalidArguments):
            second.call("delete", ids=["mine"])


def test_save_load_round_trip_between_sessions(orch: orchestrator.Orchestrator) -> None:
    with orch.session(POOL) as source, orch.session(POOL) as target:
        fill(source)
        assert source.call("save", path="kb/v1")["size"] == 3
        assert target.call("load", path="kb/v1") == {"path": "kb/v1", "size": 3}
        assert target.call("search", query="barking") == source.call("search", query="barking")
        with pytest.raises(errors.InvalidArguments) as exc:
            target.call("load", path="../../etc")
        assert invalid_field(exc) == "path"


def test_hostile_paths_touch_nothing_outside_data_dir(
    orch: orchestrator.Orchestrator, data_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    with orch.session(POOL) as victim, orch.session(POOL) as attacker:
        snapshots = data_dir / ".snapshots"
        earlier = set(snapshots.iterdir()) if snapshots.exists() else set()
        victim.call("add", vectors=rng.standard_normal((150, 384)).tolist())  # checkpointed as a snapshot file
        (key,) = [p.name for p in set(snapshots.iterdir()) - earlier if not p.name.startswith(".")]
        snapshot = data_dir / ".snapshots" / key
        before = {f.name: f.read_bytes() for f in snapshot.iterdir()}
        fill(attacker)
        outside = tmp_path / "outside"
        outside.mkdir()
        (data_dir / "escape").symlink_to(outside)
        hostile = [f"x/../.snapshots/{key}", f".snapshots/{key}", "escape/stolen", "../stolen", str(outside / "abs")]
        for path in hostile:
            for op in ("save", "load"):
                with pytest.raises(errors.InvalidArguments) as exc:
                    attacker.call(op, path=path)
                assert invalid_field(exc) == "path", (op, path, exc.value)
        assert list(outside.iterdir()) == [] and not (data_dir / "x").exists()
        assert not (data_dir.parent / "stolen").exists()
        assert {f.name: f.read_bytes() for f in snapshot.iterdir()} == before
        assert attacker.call("size") == 3 and victim.call("size") == 150  # both sessions still served


def test_requests_past_the_limits_are_refused_and_the_actor_keeps_serving(
    orch: orchestrator.Orchestrator, gateway: GatewayProcess
) -> None:
    (actor,) = actors(orch, POOL)
    with pytest.raises(errors.InvalidArguments) as exc:
        orch.call(POOL, "embed", texts=["x"] * 2049)
    assert invalid_field(exc) == "texts" and "(options.max_inputs)" in exc.value.message
    with pytest.raises(errors.InvalidArguments) as exc:
        orch.call(POOL, "embed", texts=["ok", "y" * 32_769])
    assert invalid_field(exc) == "texts.1" and "(options.max_input_chars)" in exc.value.message
    with orch.session(POOL) as index:
        fill(index)
        with pytest.raises(errors.InvalidArguments) as exc:
            index.call("search", query="x", k=1001)
        assert invalid_field(exc) == "k" and "(options.max_k)" in exc.value.message
        with pytest.raises(errors.InvalidArguments) as exc:
            index.call("add", docs=["x"] * 2049)
        assert invalid_field(exc) == "docs" and index.call("size") == 3
    response = httpx.post(f"{gateway.url}/v1/pools/{POOL}/ops/embed", json={"texts": ["x"] * 2049}, timeout=60)
    assert response.status_code == 422 and response.json()["error"]["detail"][0]["field"] == "texts"
    flood = {"model": f"{POOL}/minilm", "input": ["x"] * 200_000}  # the measured hole: held the actor 120 s, then 504
    response = httpx.post(f"{gateway.url}/v1/embeddings", json=flood, timeout=60)
    assert response.status_code == 422 and "options.max_inputs" in response.json()["error"]["message"]
    assert len(orch.call(POOL, "embed", texts=["x"] * 2048)) == 2048  # at the limit: served
    assert [a["pid"] for a in actors(orch, POOL)] == [actor["pid"]]


def test_bad_input_is_invalid_arguments_naming_the_field(orch: orchestrator.Orchestrator) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("embed", {"texts": []}, "texts"),
        ("embed", {"texts": ["fine", 7]}, "texts.1"),
        ("embed", {"texts": "not a list"}, "texts"),
    ]
    for op, args, field in cases:
        with pytest.raises(errors.InvalidArguments) as exc:
            orch.call(POOL, op, **args)
        assert invalid_field(exc) == field, (op, args, exc.value)
    with orch.session(POOL) as index:
        fill(index)
        for args, field in [({"query": "x", "k": 0}, "k"), ({"query": "x", "k": -1}, "k"), ({"k": 3}, "query")]:
            with pytest.raises(errors.InvalidArguments) as exc:
                index.call("search", **args)
            assert invalid_field(exc) == field
    with pytest.raises(errors.InvalidArguments, match="inside a session"):
        orch.call(POOL, "add", docs=["x"])


def test_openai_client_embeddings_create(orch: orchestrator.Orchestrator, gateway: GatewayProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    expected = orch.call(POOL, "embed", texts=TEXTS)
    for encoding in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        extra = {"encoding_format": encoding} if encoding else {}
        response = client.embeddings.create(model=f"{POOL}/all-MiniLM-L6-v2", input=TEXTS, **extra)
        got = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        if encoding == "base64":  # asked for explicitly: the client hands the strings over as they came
            got = [np.frombuffer(base64.b64decode(text), dtype="<f4") for text in got]
        assert cosine(got, expected).min() >= 0.999
        assert response.model == f"{POOL}/all-MiniLM-L6-v2" and response.usage.prompt_tokens > len(TEXTS)
    single = client.embeddings.create(model=f"{POOL}/minilm", input="one text")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model=f"{POOL}/no-such-model", input="x")
    assert missing.value.body["param"] == "model"  # type: ignore[index]


def test_openai_client_models_list_shows_the_embedding_model(gateway: GatewayProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    listed = {model.id: model for model in client.models.list()}
    assert f"{POOL}/all-MiniLM-L6-v2" in listed, listed
    assert listed[f"{POOL}/all-MiniLM-L6-v2"].owned_by == POOL
    assert client.models.retrieve(f"{POOL}/all-MiniLM-L6-v2").id == f"{POOL}/all-MiniLM-L6-v2"
    for model_id in listed:  # every listed id is one the embeddings route takes
        assert len(client.embeddings.create(model=model_id, input="x").data) == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": f"{POOL}/minilm", "input": []}, 400, "input"),
        ({"model": f"{POOL}/minilm", "input": ["ok", 3]}, 400, "input"),
        ({"model": f"{POOL}/minilm", "input": [[101, 102]]}, 400, "input"),
        ({"model": f"{POOL}/minilm", "input": ""}, 400, "input"),
        ({"model": f"{POOL}/minilm"}, 400, "input"),
        ({"input": "x"}, 400, "model"),
        ({"model": f"{POOL}/minilm", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": f"{POOL}/minilm", "input": "x", "dimensions": 12}, 400, "dimensions"),
        ({"model": "/no/such/model/path", "input": "x"}, 404, "model"),
        ({"model": "gpt-4o", "input": "x"}, 404, "model"),
    ],
)
def test_openai_route_rejects_bad_input_naming_the_field(
    gateway: GatewayProcess, body: dict[str, Any], status: int, param: str
) -> None:
    response = httpx.post(f"{gateway.url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert error["message"].startswith(param) or param in error["message"]


def test_sdk_embed_and_retrieval_session_over_http(orch: orchestrator.Orchestrator, gateway: GatewayProcess) -> None:
    with Client(gateway.url) as client:
        assert cosine(client.embed(TEXTS, pool=POOL), orch.call(POOL, "embed", texts=TEXTS)).min() >= 0.999
        assert len(client.embed("one", pool=POOL)) == 1
        with client.retrieval(POOL) as index:
            index.add([doc for _, doc, _ in DOCS], ids=[i for i, _, _ in DOCS], metadata=[m for _, _, m in DOCS])
            assert index.search("a purring kitten", k=1)["ids"] == ["cat"]
            assert [r["ids"][0] for r in index.search(queries=["barking", "markets"], k=1)["results"]] == [
                "dog",
                "stocks",
            ]
            assert index.search("x", k=10)["note"].startswith("k=10 is larger than the index")
            with pytest.raises(errors.InvalidArguments) as exc:
                index.search("x", k=0)
            assert invalid_field(exc) == "k"
            with pytest.raises(errors.InvalidArguments):
                index.delete(["ghost"])
            assert index.delete(["cat"]) == {"deleted": 1, "size": 2} and index.size() == 2
    # the same errors as HTTP statuses on the DESIGN routes
    response = httpx.post(f"{gateway.url}/v1/pools/{POOL}/ops/embed", json={"texts": []}, timeout=60)
    assert response.status_code == 422 and response.json()["error"]["detail"][0]["field"] == "texts"


def test_session_index_survives_sigkill_of_its_actor(orch: orchestrator.Orchestrator) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((150, 384)).astype(np.float32)  # past snapshot_min_docs: a snapshot file
    with orch.session(POOL) as small, orch.session(POOL) as large:
        fill(small)
        large.call("add", vectors=vectors.tolist(), ids=[f"v{i}" for i in range(150)])
        before_small = small.call("search", query="barking", k=3)
        before_large = large.call("search", vectors=vectors[:2].tolist(), k=3)
        (actor,) = actors(orch, POOL)
        kill_and_wait_restart(orch, POOL, actor["pid"])
        assert small.call("size") == 3 and large.call("size") == 150
        assert small.call("search", query="barking", k=3) == before_small
        assert large.call("search", vectors=vectors[:2].tolist(), k=3) == before_large
        assert [r["ids"][0] for r in before_large["results"]] == ["v0", "v1"]
