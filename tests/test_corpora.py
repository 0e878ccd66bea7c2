"""Named corpora on the retrieval pool, on a real local Ray: embedded once by a job, served by every actor (also
after a SIGKILL and after a restart of everything on the same state_dir) without embedding again, searched as a
plain op, refused at submit naming the field, and used from DSPy through ``PoolRetriever``."""

from __future__ import annotations

import copy
import json
import pickle
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("sentence_transformers", reason="the retrieval extra is not installed")
pytest.importorskip("dspy", reason="the heavy extra (dspy) is not installed")

import dspy
import ray

import orchestrator
from orchestrator import errors
from orchestrator.dataplane import handles
from orchestrator.dspy import PoolLM, PoolRetriever
from orchestrator.types import Failure
from tests.conftest import GatewayProcess, Start, actors, kill_and_wait_restart, wait_until

POOL = "retrieval"  # env_manager: none, so no env is built for it
SOLO = "solo"  # one actor running one call at a time: a build there would wait on itself, so it is refused
TOPICS = {
    "cat": "Cats purr when they are content and sleep most of the day.",
    "dog": "Dogs bark at the mail carrier and love long walks.",
    "stocks": "The stock market fell sharply on Monday after the earnings report.",
    "rain": "Heavy rain and thunderstorms are expected over the weekend.",
    "python": "Python is a programming language with dynamic typing and garbage collection.",
    "piano": "She practised the piano sonata for hours before the recital.",
    "soccer": "The football team scored a late goal to win the championship match.",
    "volcano": "The volcano erupted, sending lava and ash high into the sky.",
    "bread": "Knead the dough, let it rise, then bake the bread until golden.",
    "moon": "Astronauts walked on the moon and brought back lunar rocks.",
}
DOCS = [{"id": key, "text": text} for key, text in TOPICS.items()]
QUERIES = {"a kitten sleeping": "cat", "baking a loaf": "bread", "an eruption of lava": "volcano"}


def pool_spec(size: int = 2, concurrency: int = 4) -> dict[str, Any]:
    return {
        "worker": "workers.retrieval:Retrieval",
        "env_manager": "none",
        "size": size,
        "resources": {"num_cpus": 0.25},
        "limits": {"concurrency": concurrency, "call_timeout_s": 120},
        "health": {"period_s": 0.5, "timeout_s": 30},
        # corpus_batch 4: a build of 10 documents takes 3 steps (a progress event and a checkpoint each)
        "options": {
            "device": "cpu",
            "batch_size": 16,
            "threads": 1,
            "corpus_batch": 4,
            "max_corpus_docs": 300,
            "max_input_chars": 2000,
        },
        "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpora-state")


@pytest.fixture(scope="module")
def cluster(start_orchestrator: Start, state_dir: Path) -> dict[str, Any]:
    """The running orchestrator (the restart test puts the new one here) and the start function."""
    pools = {POOL: pool_spec(), SOLO: pool_spec(size=1, concurrency=1)}
    return {"orch": start_orchestrator(pools, state_dir=str(state_dir)), "start": start_orchestrator}


@pytest.fixture
def orch(cluster: dict[str, Any]) -> orchestrator.Orchestrator:
    return cluster["orch"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def built(cluster: dict[str, Any]) -> dict[str, Any]:
    """Corpus "docs" built once for the module: the job's events and result, and texts embedded per actor."""
    orch = cluster["orch"]
    before = embedded(orch)
    job = orch.submit(POOL, "corpus_build", name="docs", docs=DOCS)
    events = [event for _, event in job.events()]
    result = job.result(timeout=120)
    return {"events": events, "result": result, "before": before, "after": embedded(orch)}


def ask(orch: orchestrator.Orchestrator, slot: dict[str, Any], op: str, **args: Any) -> Any:
    """Run ``op`` on one actor of the pool, directly (not through the router's choice)."""
    handle = ray.get_actor(slot["name"], namespace=orch.namespace)
    answer = ray.get(handle.call.remote((op, args, None, None, "test", ""), True), timeout=120)
    if isinstance(answer, Failure):
        raise errors.OrchestratorError.from_dict(answer.error)
    return answer


def each_actor(orch: orchestrator.Orchestrator, op: str, **args: Any) -> dict[int, Any]:
    """``op``'s answer from every actor of the pool, by pid."""
    return {slot["pid"]: ask(orch, slot, op, **args) for slot in actors(orch, POOL)}


def embedded(orch: orchestrator.Orchestrator) -> dict[int, int]:
    """Texts each actor has embedded since it started, by pid."""
    return {pid: info["texts_embedded"] for pid, info in each_actor(orch, "info").items()}


def top_ids(hits: dict[str, Any]) -> list[str]:
    return [result["ids"][0] for result in hits["results"]]


def field_of(exc: pytest.ExceptionInfo[errors.OrchestratorError]) -> str:
    return str(exc.value.detail[0]["field"])


# ------------------------------------------------------------------ built once, served by all
def test_a_corpus_is_embedded_once_by_its_job_and_loaded_by_every_actor(
    orch: orchestrator.Orchestrator, built: dict[str, Any], state_dir: Path
) -> None:
    progress = [e["progress"] for e in built["events"] if "progress" in e]
    assert progress == [{"done": 4, "total": 10}, {"done": 8, "total": 10}, {"done": 10, "total": 10}]
    assert built["events"][-1] == {"corpus": built["result"]}
    assert built["result"]["name"] == "docs" and built["result"]["documents"] == 10
    grew = sorted(built["after"][pid] - built["before"][pid] for pid in built["after"])
    assert grew == [0, 10], grew  # the job's actor embedded the 10 documents; the other loaded the files only
    for listing in each_actor(orch, "corpora").values():
        (entry,) = listing
        assert entry == {"name": "docs", "documents": 10, "dimensions": 384, "model": "all-MiniLM-L6-v2", **entry}
        assert entry["built"] <= time.time()
    folder = state_dir / "corpora" / "docs"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no half-written build left
    assert len(list(folder.iterdir())) == 1 and json.loads(next(folder.glob("*/corpus.json")).read_text())["documents"]


def test_both_actors_answer_a_search_of_the_corpus_with_the_same_hits(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    answers = each_actor(orch, "search", corpus="docs", queries=list(QUERIES), k=3)
    assert len(answers) == 2
    first, second = answers.values()
    assert first == second and top_ids(first) == list(QUERIES.values())
    hit = orch.call(POOL, "search", corpus="docs", query="a kitten sleeping", k=2)  # a plain op: no session
    assert hit["ids"][0] == "cat" and hit["docs"][0] == TOPICS["cat"] and len(hit["scores"]) == 2
    with orch.session(POOL) as session:  # in a session: the corpus, or the session's own index
        assert session.call("search", corpus="docs", query="a kitten sleeping", k=2) == hit
        session.call("add", docs=["only in this session"], ids=["mine"])
        assert session.call("search", query="session", k=5)["ids"] == ["mine"]


def test_rebuilding_a_name_replaces_it_and_dropping_it_removes_it_everywhere(
    orch: orchestrator.Orchestrator, built: dict[str, Any], state_dir: Path
) -> None:
    orch.submit(POOL, "corpus_build", name="swap", docs=DOCS[:2]).result(timeout=120)
    first_build = {p.name for p in (state_dir / "corpora" / "swap").iterdir()}
    orch.submit(POOL, "corpus_build", name="swap", docs=DOCS[5:8]).result(timeout=120)
    builds = {p.name for p in (state_dir / "corpora" / "swap").iterdir()}
    assert len(builds) == 1 and builds.isdisjoint(first_build)  # a new folder; the old one removed after the switch
    for answer in each_actor(orch, "search", corpus="swap", query="lava", k=5).values():
        assert sorted(answer["ids"]) == ["piano", "soccer", "volcano"]
    assert orch.call(POOL, "corpus_drop", name="swap") == {"name": "swap", "dropped": True}
    assert all([c["name"] for c in listing] == ["docs"] for listing in each_actor(orch, "corpora").values())
    assert not (state_dir / "corpora" / "swap").exists()
    gone = [("search", {"corpus": "swap", "query": "x"}, "corpus"), ("corpus_drop", {"name": "swap"}, "name")]
    for op, args, field in gone:
        with pytest.raises(errors.CorpusNotFound, match="swap") as missing:
            orch.call(POOL, op, **args)
        assert field_of(missing) == field and missing.value.op == op


def test_a_corpus_is_still_served_after_sigkill_of_an_actor_without_embedding_again(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    expected = orch.call(POOL, "search", corpus="docs", queries=list(QUERIES), k=3)
    victim = actors(orch, POOL)[0]["pid"]
    kill_and_wait_restart(orch, POOL, victim)
    counts = embedded(orch)
    (fresh,) = [pid for pid in counts if pid not in built["after"]]
    assert counts[fresh] == 0  # the replacement loaded the corpus (replayed corpus_load) from its files
    for listing in each_actor(orch, "corpora").values():
        assert [c["name"] for c in listing] == ["docs"]  # "swap" was dropped: forgotten, not replayed
    assert list(each_actor(orch, "search", corpus="docs", queries=list(QUERIES), k=3).values()) == [expected] * 2
    assert embedded(orch)[fresh] == len(QUERIES)  # the queries, nothing else


def test_a_build_resumes_after_sigkill_of_its_actor_without_embedding_finished_steps_again(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    texts = [f"note {i}: {text}" for i in range(20) for text in TOPICS.values()]
    many = [{"id": f"n{i}", "text": text} for i, text in enumerate(texts)]
    before = embedded(orch)
    job = orch.submit(POOL, "corpus_build", name="many", docs=many)
    events: list[dict[str, Any]] = []
    killed: int | None = None
    for _, event in job.events():
        events.append(event)
        if killed is None and event.get("progress", {}).get("done", 0) >= 40:  # 10 steps logged, and checkpointed
            killed = running_job(orch, job.id)
            kill_and_wait_restart(orch, POOL, killed)
    result = job.result(timeout=120)
    assert result["documents"] == 200 and killed is not None
    done = [e["progress"]["done"] for e in events if "progress" in e]
    assert done == [*range(4, 201, 4)], done  # every step's event exactly once, in order
    after = embedded(orch)
    rerun = sum(count - before.get(pid, 0) for pid, count in after.items())
    # The re-run embedded only the steps its checkpoint did not cover (the last one or two may go uncovered: a
    # step's checkpoint can reach the store in the batch after its event)
    assert 0 < rerun <= 200 - 36, rerun
    assert orch.call(POOL, "search", corpus="many", query="note 7: lava ash erupted", k=1)["ids"][0].startswith("n")
    orch.call(POOL, "corpus_drop", name="many")


def running_job(orch: orchestrator.Orchestrator, job_id: str) -> int:
    """The pid of the actor running job ``job_id``."""

    def find() -> int | None:
        for slot in actors(orch, POOL):
            ping = ray.get(ray.get_actor(slot["name"], namespace=orch.namespace).ping.remote())
            if any(call["job_id"] == job_id for call in ping["running"].values()):
                return int(ping["pid"])
        return None

    return int(wait_until(find, timeout=30, what=f"job {job_id} to run"))


# ------------------------------------------------------------------ from a file, and refusals
def test_a_corpus_builds_from_an_uploaded_jsonl_file(orch: orchestrator.Orchestrator, built: dict[str, Any]) -> None:
    lines = "\n".join(json.dumps(doc) for doc in DOCS[:4]) + "\n\n"
    upload = orch.upload_file(lines.encode(), "corpus.jsonl", "user_data")
    model = f"{POOL}/all-MiniLM-L6-v2"  # naming the pool's own model is fine
    result = orch.submit(POOL, "corpus_build", name="from-file", file_id=upload["id"], model=model).result(timeout=120)
    assert result["documents"] == 4
    assert orch.call(POOL, "search", corpus="from-file", query="stock prices", k=1)["ids"] == ["stocks"]
    orch.call(POOL, "corpus_drop", name="from-file")


def test_bad_builds_are_refused_at_submit_naming_the_field_and_nothing_is_queued(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    def uploaded(text: str) -> str:
        return str(orch.upload_file(text.encode(), "bad.jsonl", "user_data")["id"])

    doc = DOCS[0]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "bad name!", "docs": DOCS}, "name"),
        ({"name": "../escape", "docs": DOCS}, "name"),
        ({"name": "x"}, "docs"),
        ({"name": "x", "docs": DOCS, "file_id": "file-x"}, "file_id"),
        ({"name": "x", "docs": []}, "docs"),
        ({"name": "x", "docs": [*DOCS[:3], {"text": "no id"}]}, "docs.3.id"),
        ({"name": "x", "docs": [doc, {"id": "b"}]}, "docs.1.text"),
        ({"name": "x", "docs": [doc, {"id": "b", "text": "ok"}, {"id": "c", "text": "  "}]}, "docs.2.text"),
        ({"name": "x", "docs": [{"id": "", "text": "empty id"}]}, "docs.0.id"),
        ({"name": "x", "docs": [{"id": "a", "text": "y" * 2001}]}, "docs.0.text"),  # options.max_input_chars
        ({"name": "x", "docs": [*DOCS[:4], {"id": "cat", "text": "again"}]}, "docs.4.id"),
        ({"name": "x", "docs": [{"id": f"d{i}", "text": "t"} for i in range(301)]}, "docs"),  # max_corpus_docs
        ({"name": "x", "docs": [{"id": "a", "txt": "typo"}]}, "docs.0.text"),
        ({"name": "x", "file_id": "file-does-not-exist"}, "file_id"),
        ({"name": "x", "file_id": uploaded(json.dumps(doc) + '\n{"id": "b"}\n')}, "file_id.line 2.text"),
        ({"name": "x", "file_id": uploaded("not json\n")}, "file_id.line 1"),
        ({"name": "x", "file_id": uploaded("\n\n")}, "file_id"),
        ({"name": "x", "docs": DOCS, "model": "light/tiny"}, "model"),  # a pool embeds with its own model only
    ]
    queued = [job["id"] for job in orch.jobs(POOL)]
    for args, field in cases:
        with pytest.raises(errors.InvalidArguments) as refused:
            orch.submit(POOL, "corpus_build", **args)
        assert field_of(refused) == field, (args, refused.value)
        assert field in refused.value.message
    assert [job["id"] for job in orch.jobs(POOL)] == queued  # nothing was queued
    for k in (0, 1001):  # options.max_k: 1000
        with pytest.raises(errors.InvalidArguments, match="k: ") as bad_k:
            orch.call(POOL, "search", corpus="docs", query="x", k=k)
        assert field_of(bad_k) == "k"
    with pytest.raises(errors.InvalidArguments, match="corpus") as outside:
        orch.call(POOL, "search", query="no corpus, no session")
    assert field_of(outside) == "corpus"
    with pytest.raises(errors.CorpusNotFound, match="'nope'") as missing:
        orch.call(POOL, "search", corpus="nope", query="x")
    assert missing.value.code == "corpus_not_found" and missing.value.http_status == 404


def test_corpus_not_found_is_404_over_http_and_a_corpus_search_needs_no_session(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    gateway = GatewayProcess(orch.namespace)
    try:
        url = f"{gateway.url}/v1/pools/{POOL}/ops/search"
        missing = httpx.post(url, json={"corpus": "nope", "query": "x"}, timeout=60)
        assert missing.status_code == 404, missing.text
        error = missing.json()["error"]
        assert error["code"] == "corpus_not_found" and "nope" in error["message"] and error["op"] == "search"
        found = httpx.post(url, json={"corpus": "docs", "query": "baking a loaf", "k": 1}, timeout=60)
        assert found.status_code == 200 and found.json()["result"]["ids"] == ["bread"]
        body = {"pool": POOL, "op": "corpus_build", "args": {"name": "x", "docs": [{"id": "a"}]}}
        refused = httpx.post(f"{gateway.url}/v1/jobs", json=body, timeout=60)
        assert refused.status_code == 422 and refused.json()["error"]["detail"][0]["field"] == "docs.0.text"
    finally:
        gateway.stop()


# ------------------------------------------------------------------ DSPy
class RAG(dspy.Module):  # type: ignore[misc]
    """Retrieve, then hand the passages on (no LM needed to check what the retriever gives)."""

    def __init__(self) -> None:
        super().__init__()
        self.retrieve = PoolRetriever("docs", k=2, pool=POOL)  # no handle: looked up when called
        self.respond = dspy.Predict("context, question -> answer")

    def forward(self, question: str) -> Any:
        found = self.retrieve(question)
        return dspy.Prediction(context=found.passages, ids=found.indices)


def test_pool_retriever_in_a_driver_returns_the_passages_like_dspy_embeddings(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    retriever = PoolRetriever("docs", k=3, pool=POOL)
    found = retriever("an eruption of lava")
    assert isinstance(found, dspy.Prediction)
    assert found.indices[0] == "volcano" and found.passages[0] == TOPICS["volcano"] and len(found.passages) == 3
    assert retriever("an eruption of lava", k=1).indices == ["volcano"]
    assert retriever.orchestrator is orch is handles.current()  # this process's handle: the one start() returned
    assert PoolLM("light/tiny").orchestrator is orch
    with pytest.raises(errors.CorpusNotFound):
        PoolRetriever("nope", pool=POOL)("x")


def test_pool_retriever_in_a_module_survives_deepcopy_and_state_round_trips(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    program = RAG()
    answer = program(question="baking a loaf")
    assert answer.ids[0] == "bread" and answer.context[0] == TOPICS["bread"] and len(answer.ids) == 2
    for clone in (program.deepcopy(), copy.deepcopy(program)):
        assert clone.retrieve is not program.retrieve and clone.retrieve.corpus == "docs"
        assert clone(question="a kitten sleeping").ids[0] == "cat"
    explicit = PoolRetriever("docs", k=1, pool=POOL, orchestrator=orch)
    assert copy.deepcopy(explicit)._handle is orch  # shared, never copied
    unpickled = pickle.loads(pickle.dumps(explicit))  # the handle stays behind: found again where it lands
    assert unpickled._handle is None and unpickled("a kitten sleeping").indices == ["cat"]
    state = program.dump_state()
    assert set(state) == {"respond"}  # the retriever holds no parameters
    restored = RAG()
    restored.load_state(state)
    assert restored(question="stock prices").ids[0] == "stocks"


def test_pool_retriever_inside_a_pool_actor_uses_the_actors_own_handle(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    def in_actor(host: Any) -> tuple[bool, list[str], bool]:
        before = host._orchestrator is None  # no handle built yet: a user's module is often built this early
        retriever = PoolRetriever("docs", k=1, pool=POOL)
        ids = retriever("baking").indices
        return before, ids, host._orchestrator is handles.current()

    for pool in (POOL, SOLO):  # its own pool (inline), and another pool's actor (through the router)
        actor = ray.get_actor(actors(orch, pool)[0]["name"], namespace=orch.namespace)
        before, ids, own = ray.get(actor.__ray_call__.remote(in_actor), timeout=60)
        assert ids == ["bread"] and own, pool
        assert before or pool == POOL, "the solo actor had built a handle before any code asked for one"


def test_a_build_on_a_pool_running_one_call_per_actor_is_refused_before_embedding(
    orch: orchestrator.Orchestrator, built: dict[str, Any]
) -> None:
    job = orch.submit(SOLO, "corpus_build", name="solo", docs=DOCS)
    with pytest.raises(errors.InvalidConfig, match=f"pools.{SOLO}.limits.concurrency") as refused:
        job.result(timeout=60)
    assert refused.value.code == "invalid_config"
    (slot,) = actors(orch, SOLO)
    assert ask(orch, slot, "info")["texts_embedded"] == 0 and ask(orch, slot, "corpora") == []


# ------------------------------------------------------------------ last: a restart of everything
def test_after_a_restart_of_everything_the_corpus_is_served_without_embedding_again(
    cluster: dict[str, Any], built: dict[str, Any], state_dir: Path
) -> None:
    old = cluster["orch"]
    expected = old.call(POOL, "search", corpus="docs", queries=list(QUERIES), k=3)
    old.shutdown(drain_s=1.0)
    started = time.monotonic()
    new = cluster["orch"] = cluster["start"]({POOL: pool_spec()}, state_dir=str(state_dir))
    assert time.monotonic() - started < 120
    assert set(embedded(new).values()) == {0}  # two new actors, both serving the corpus from its files
    for listing in each_actor(new, "corpora").values():
        assert [(c["name"], c["documents"]) for c in listing] == [("docs", 10)]
    assert list(each_actor(new, "search", corpus="docs", queries=list(QUERIES), k=3).values()) == [expected] * 2
    assert PoolRetriever("docs", k=1, pool=POOL)("a kitten sleeping").indices == ["cat"]  # the new handle now
