"""Retrieval pool throughput against bare sentence-transformers, and vector search exact vs FAISS, in one run.

Run from the repository root (with the project's venv and the retrieval extra installed):

    python bench/retrieval.py              # full run, writes bench/results/retrieval.json
    python bench/retrieval.py --quick      # fewer sentences and documents (a smoke run)

Embedding: the same sentences (about 16 tokens each) and model, batch 64. The
anchor is bare ``SentenceTransformer.encode`` in this process on the same
requests of 64 texts, one ``encode`` each; against it, the pool's ``embed`` op
through the in-process API (``call_many``, one call per request; the result is a
float32 array read from Ray's object store) and ``POST /v1/embeddings`` through a
real gateway subprocess (4 client threads). A second pair sends all texts at
once (one ``encode``, one ``embed`` call): ``encode`` sorts texts by length
across the whole set, so its batches pad less than requests of 64 can; each
pool figure is compared with the bare run that does the same work. The pool
has one actor with as many torch threads as the bare run. Each rate is the
best of a few repeats, taken in alternation so drift hits every side alike.

Search: ``VectorIndex`` (the pool's index) over clustered unit vectors at 10k
and 100k documents, one query per call: queries/s and p50 latency, exact
(torch matrix product) against FAISS (IVF + exact re-ranking), with FAISS's
recall@10 against exact.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import numpy as np
import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from workers.retrieval.embedder import bundled_minilm  # noqa: E402
from workers.retrieval.index import VectorIndex  # noqa: E402

POOL = "bench-ret"  # not "retrieval": that would make Ray build envs/retrieval into a fresh env
BATCH = 64
GOALS = {"pool": 0.95, "gateway": 0.9, "pool_all": 0.95}  # pool sentences/s / bare sentences/s (same work)
WORDS = [
    *("the", "a", "model", "search", "vector", "index", "query", "fast", "slow", "river", "mountain", "city"),
    *("data", "paper", "result", "cat", "dog", "market", "price", "learning", "training", "network", "layer"),
    *("token", "embedding", "cluster", "actor", "pool", "session", "worker", "request", "answer", "light"),
]


def sentences(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of 12-16 words (about 16 tokens with [CLS] and [SEP])."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(12, 17)))) + "." for _ in range(n)]


def clustered(n: int, dim: int = 384, centers: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim)).astype(np.float32)
    vectors = middle[rng.integers(0, centers, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # type: ignore[no-any-return]


def best_rates(sides: dict[str, Callable[[], int]], seconds: dict[str, list[float]], repeats: int) -> None:
    """Run each side ``repeats`` times in alternation; append items/s of each run."""
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            items = run()
            seconds[name].append(items / (time.perf_counter() - start))


def embedding_rows(texts: list[str], repeats: int, threads: int) -> list[dict[str, Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    bare = SentenceTransformer(str(bundled_minilm()), device="cpu")
    state_dir = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    config = parse_config(
        {
            "ray": {"namespace": f"bench-{uuid.uuid4().hex[:6]}"},
            "state_dir": str(state_dir),
            "pools": {
                POOL: {
                    "worker": "workers.retrieval:Retrieval",
                    "size": 1,
                    "resources": {"num_cpus": threads},
                    "limits": {"concurrency": 1, "queue": 256, "call_timeout_s": 600},
                    "options": {"device": "cpu", "batch_size": BATCH, "threads": threads},
                    "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                }
            },
        },
        base_dir=ROOT,
    )
    ray.init(num_cpus=threads + 2, include_dashboard=False, log_to_driver=False, namespace=config.ray.namespace)
    orch = orchestrator.start(config)
    gateway = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator", "gateway"),
            *("--address", ray.get_runtime_context().gcs_address, "--namespace", config.ray.namespace),
            *("--port", "8765"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = "http://127.0.0.1:8765"
    chunks = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        http = httpx.Client(base_url=url, timeout=600)

        def run_bare() -> int:
            for chunk in chunks:
                bare.encode(chunk, batch_size=BATCH, normalize_embeddings=True)
            return len(texts)

        def run_bare_all() -> int:
            bare.encode(texts, batch_size=BATCH, normalize_embeddings=True)
            return len(texts)

        def run_pool() -> int:
            orch.call_many(POOL, "embed", [{"texts": chunk} for chunk in chunks])
            return len(texts)

        def run_pool_all() -> int:
            orch.call(POOL, "embed", texts=texts)
            return len(texts)

        def post(chunk: list[str]) -> None:
            response = http.post("/v1/embeddings", json={"model": f"{POOL}/minilm", "input": chunk})
            response.raise_for_status()

        def run_gateway() -> int:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(post, chunks))
            return len(texts)

        sides = {
            "bare": run_bare,
            "pool": run_pool,
            "gateway": run_gateway,
            "bare_all": run_bare_all,
            "pool_all": run_pool_all,
        }
        for run in sides.values():  # warm up: first calls load kernels and connections
            run()
        rates: dict[str, list[float]] = {name: [] for name in sides}
        best_rates(sides, rates, repeats)
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
        orch.shutdown(drain_s=1.0)
        ray.shutdown()
    names = {
        "bare": "bare sentence-transformers encode, per request of 64",
        "pool": "pool embed (in-process API), per request of 64",
        "gateway": "gateway POST /v1/embeddings, per request of 64",
        "bare_all": "bare encode, all texts at once",
        "pool_all": "pool embed, all texts in one call",
    }
    anchors = {"pool": "bare", "gateway": "bare", "pool_all": "bare_all"}
    return [
        {
            "name": names[key],
            "sentences_per_s": max(runs),
            "anchor": anchors.get(key),
            "ratio": max(runs) / max(rates[anchors.get(key, key)]),
            "goal": GOALS.get(key),
            "runs": runs,
        }
        for key, runs in rates.items()
    ]


def search_rows(sizes: list[int], queries: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for size in sizes:
        vectors = clustered(size + queries, seed=size)
        corpus, asks = vectors[:size], vectors[size:]
        index = VectorIndex(384, faiss_min_docs=size)
        index.add(corpus, [None] * size, [str(i) for i in range(size)])
        start = time.perf_counter()
        index.search(asks[:1], 10)  # builds (trains) the FAISS index
        build_s = time.perf_counter() - start
        answers: dict[bool, list[list[int]]] = {}
        for exact in (True, False):
            latencies, found = [], []
            for q in asks:
                start = time.perf_counter()
                hits = index.search(q[None, :], 10, exact=exact)
                latencies.append(time.perf_counter() - start)
                found.append([row for row, _ in hits[0]])
            answers[exact] = found
            rows.append(
                {
                    "name": f"search {size // 1000}k docs, {'exact (torch)' if exact else 'FAISS IVF + re-rank'}",
                    "docs": size,
                    "qps": len(asks) / sum(latencies),
                    "p50_ms": 1000 * float(np.median(latencies)),
                    "build_s": None if exact else build_s,
                }
            )
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(answers[False], answers[True], strict=True)])
        rows[-1]["recall_at_10"] = float(recall)
    return rows


def show(embedding: list[dict[str, Any]], search: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="embedding throughput (CPU, batch 64, MiniLM-L6)")
    for column in ("path", "sentences/s", "vs bare (same work)", "goal"):
        table.add_column(column)
    for row in embedding:
        goal = row.get("goal")
        verdict = "" if goal is None else ("ok" if row["ratio"] >= goal else "MISSED") + f" (>= {goal})"
        table.add_row(row["name"], f"{row['sentences_per_s']:.0f}", f"{row['ratio']:.3f}", verdict)
    console.print(table)
    table = Table(title="search (one query per call, k=10)")
    for column in ("index", "queries/s", "p50 ms", "FAISS build s", "recall@10"):
        table.add_column(column)
    for row in search:
        build = "" if row["build_s"] is None else f"{row['build_s']:.1f}"
        recall = f"{row['recall_at_10']:.3f}" if "recall_at_10" in row else ""
        table.add_row(row["name"], f"{row['qps']:.0f}", f"{row['p50_ms']:.2f}", build, recall)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sentences and documents")
    parser.add_argument("--sentences", type=int, default=2048, help="sentences per measured run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, bare and in the pool's actor")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = parser.parse_args()
    console = Console(width=120)
    texts = sentences(min(512, args.sentences) if args.quick else args.sentences)
    embedding = embedding_rows(texts, repeats=2 if args.quick else 3, threads=args.threads)
    search = search_rows([10_000] if args.quick else [10_000, 100_000], queries=50 if args.quick else 200)
    show(embedding, search, console)
    report = {
        "benchmark": "retrieval",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "params": {"sentences": len(texts), "batch": BATCH, "threads": args.threads, "quick": args.quick},
        "embedding": embedding,
        "search": search,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
