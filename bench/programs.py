"""The RAG example (examples/rag) optimized through the heavy pool vs the same compile in a bare driver, and its
evaluation throughput with 1 vs 2 light actors and 1 vs 2 retrieval actors.

Run from the repository root (with the project's venv active; needs dspy, optuna, torch, transformers and
sentence-transformers):

    python bench/programs.py               # 3 rounds each, writes bench/results/programs.json
    python bench/programs.py --quick       # one timed run per side (a smoke run)

One local Ray (4 logical CPUs) holds an orchestrator with ``light`` (one
``workers.light:Light`` actor on a random tiny Llama), ``light2`` (the same, two
actors), ``retrieval`` (one MiniLM actor), ``retrieval2`` (two) and ``heavy``,
each ``num_cpus`` 0.25, env_manager none, and pools.yaml's ``code: [examples]``.
Both retrieval pools serve the corpus ``pydocs`` (examples/rag/data.py).

1. Optimization: the same small MIPROv2 search of the RAG class (2 trials, 2
   candidates, no demos, 4 threads, seed 9) on 6 train and 4 validation rows,
   (a) submitted as an ``optimize`` job with the class by name, submit to result,
   (b) ``dspy.MIPROv2(...).compile`` in this driver on the same class, with a
   ``PoolLM`` on the same light pool and the same ``PoolRetriever`` corpus. Turns
   alternate after a warm-up round; best of the timed runs. Goal: heavy / bare <= 1.1.
2. Evaluation: an ``evaluate`` job (16 threads) of the RAG program over 24 rows,
   examples/s with each combination of 1 or 2 light actors and 1 or 2 retrieval actors.
3. Serving: the RAG program registered as a version of the ``programs`` pool (two
   actors), 8 clients at once, runs/s over HTTP (``orchestrator gateway`` in a
   subprocess, one httpx client per thread) and in-process (``orch.run_program``), vs
   the same class called in this bare driver by 8 threads with a ``PoolLM`` on the
   same light pool and the same ``PoolRetriever`` corpus. Goal: served / bare >= 0.9.
   Then a batch of 64 (``batch_program``: a chunk per actor) vs 64 sequential runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/programs.py`: bench.heavy and examples must import

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from bench.heavy import calls, pools, run_job  # noqa: E402
from examples.rag.data import corpus, rows  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.models.tiny import build_tiny_model  # noqa: E402

GOAL = 1.1
CLASS = "examples.rag.program:RAG"
METRIC = "examples.rag.program:right_module"
BUDGET: dict[str, Any] = {
    "num_trials": 2,
    "num_candidates": 2,
    "max_bootstrapped_demos": 0,
    "max_labeled_demos": 0,
    "minibatch_size": 2,
    "minibatch_full_eval_steps": 2,
    "num_threads": 4,
    "seed": 9,
}
EVAL_THREADS = 16
SERVE_GOAL = 0.9
SERVE_CLIENTS = 8
BATCH = 64


PROGRAM: dict[str, Any] = {"class": CLASS, "init": {"corpus": "pydocs", "k": 2}}


def all_pools(model_dir: Path) -> dict[str, Any]:
    def retrieval(size: int) -> dict[str, Any]:
        return {
            "worker": "workers.retrieval:Retrieval",
            "env_manager": "none",
            "size": size,
            "resources": {"num_cpus": 0.25},
            "limits": {"concurrency": 16},
            "options": {"device": "cpu", "threads": 1},
            "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        }

    programs = {
        "worker": "workers.programs:Programs",
        "env_manager": "none",
        "size": 2,
        "resources": {"num_cpus": 0.25},
        "limits": {"concurrency": 16, "queue": 256},
        "options": {"model": "light/tiny", "threads": 8},
    }
    return {**pools(model_dir), "retrieval": retrieval(1), "retrieval2": retrieval(2), "programs": programs}


def heavy_side(orch: orchestrator.Orchestrator, train: list[Any], val: list[Any]) -> dict[str, Any]:
    args = {"program": PROGRAM, "trainset": train, "valset": val, "metric": METRIC}
    result, timing = run_job(orch, "optimize", **args, model="light/tiny", optimizer=BUDGET)
    return {**timing, "score": result["score"]}


def bare_side(orch: orchestrator.Orchestrator, train: list[Any], val: list[Any]) -> dict[str, Any]:
    """The same compile here: the class, a PoolLM on the same light pool, the same corpus (PoolRetriever)."""
    import dspy

    from examples.rag.program import RAG, right_module
    from orchestrator.dspy import PoolLM

    start = time.perf_counter()
    lm = PoolLM("light/tiny", orch)
    trainset = [dspy.Example(**row).with_inputs("question") for row in train]
    valset = [dspy.Example(**row).with_inputs("question") for row in val]
    with (
        open(os.devnull, "w") as quiet,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        dspy.context(lm=lm, adapter=dspy.JSONAdapter()),
    ):
        optimizer = dspy.MIPROv2(
            metric=right_module,
            prompt_model=lm,
            task_model=lm,
            auto=None,
            num_candidates=BUDGET["num_candidates"],
            max_bootstrapped_demos=0,
            max_labeled_demos=0,
            num_threads=BUDGET["num_threads"],
            seed=BUDGET["seed"],
        )
        optimizer.compile(
            RAG(corpus="pydocs", k=2),
            trainset=trainset,
            valset=valset,
            num_trials=BUDGET["num_trials"],
            minibatch_size=BUDGET["minibatch_size"],
            minibatch_full_eval_steps=BUDGET["minibatch_full_eval_steps"],
        )
    return {"seconds": time.perf_counter() - start}


def measure_optimize(orch: orchestrator.Orchestrator, rounds: int, console: Console) -> dict[str, Any]:
    data = rows()
    train, val = data[:6], data[6:10]
    sides = {"heavy": heavy_side, "bare": bare_side}
    runs: dict[str, list[dict[str, Any]]] = {"heavy": [], "bare": []}
    for r in range(rounds + 1):  # round 0: warm-up
        for name in ["heavy", "bare"] if r % 2 else ["bare", "heavy"]:
            before = calls(orch, "light")
            run = sides[name](orch, train, val)
            run["light_calls"] = calls(orch, "light") - before
            if r:
                runs[name].append(run)
            console.print(f"optimize {'warm-up' if r == 0 else f'round {r}'}, {name}: {run['seconds']:.2f} s")
    heavy = min(run["seconds"] for run in runs["heavy"])
    bare = min(run["seconds"] for run in runs["bare"])
    return {"heavy_s": heavy, "bare_s": bare, "ratio": heavy / bare, "meets": heavy / bare <= GOAL, "runs": runs}


def measure_evaluate(orch: orchestrator.Orchestrator, rounds: int, console: Console) -> dict[str, Any]:
    devset = rows()
    combos = {(1, 1): ("light", "retrieval"), (2, 1): ("light2", "retrieval"), (1, 2): ("light", "retrieval2")}
    combos[(2, 2)] = ("light2", "retrieval2")
    best: dict[str, float] = {}
    for (lights, retrievals), (light, retrieval) in combos.items():
        prog = {"class": CLASS, "init": {"corpus": "pydocs", "k": 2, "pool": retrieval}}
        speeds = []
        for _ in range(rounds + 1):  # the first: warm-up
            result, timing = run_job(
                orch,
                "evaluate",
                program=prog,
                devset=devset,
                metric=METRIC,
                model=f"{light}/tiny",
                num_threads=EVAL_THREADS,
            )
            speeds.append(len(result["results"]) / timing["seconds"])
        key = f"{lights} light, {retrievals} retrieval"
        best[key] = max(speeds[1:])
        console.print(f"evaluate, {key}: {best[key]:.2f} examples/s")
    return {"devset": len(devset), "threads": EVAL_THREADS, "examples_s": best}


def concurrently(run: Any, questions: list[str], clients: int) -> float:
    """Seconds to run ``run(question)`` for every question, ``clients`` threads at once."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(run, questions))
    return time.perf_counter() - start


def gateway_process(namespace: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``orchestrator gateway`` on this Ray, answering /healthz."""
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator", "gateway", "--address", address, "--namespace", namespace]
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATOR_TOKEN", "RAY_ADDRESS")}
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        time.sleep(0.2)
    raise RuntimeError("the gateway did not answer /healthz in 90 s")


def measure_serving(
    orch: orchestrator.Orchestrator, namespace: str, rounds: int, console: Console, tmp: Path
) -> dict[str, Any]:
    import dspy

    from examples.rag.program import RAG
    from orchestrator.dspy import PoolLM

    orch.register_program("rag", program=PROGRAM)
    questions = [row["question"] for row in rows()] * 2  # 48 runs per side
    rag = RAG(**PROGRAM["init"])
    lm = PoolLM("light/tiny", orch)

    def bare(question: str) -> None:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            rag(question=question)

    def in_process(question: str) -> None:
        orch.run_program("rag", {"question": question})

    port = 18000 + os.getpid() % 1000
    local = threading.local()

    def over_http(question: str) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        response = local.client.post("/v1/programs/rag/run", json={"question": question})
        response.raise_for_status()

    gateway = gateway_process(namespace, port, tmp / "gateway.log")
    sides = {"bare": bare, "in-process": in_process, "http": over_http}
    best: dict[str, float] = {}
    try:
        for r in range(rounds + 1):  # round 0: warm-up
            for name, side in sides.items() if r % 2 else reversed(sides.items()):
                rate = len(questions) / concurrently(side, questions, SERVE_CLIENTS)
                if r:
                    best[name] = max(best.get(name, 0.0), rate)
                console.print(f"serve {'warm-up' if r == 0 else f'round {r}'}, {name}: {rate:.2f} runs/s")
        batch_rows = [{"question": q} for q in (questions * 2)[:BATCH]]
        batch_s, sequential_s = float("inf"), float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            assert len(orch.batch_program("rag", batch_rows)["outputs"]) == BATCH
            batch_s = min(batch_s, time.perf_counter() - start)
            start = time.perf_counter()
            for row in batch_rows:
                orch.run_program("rag", row)
            sequential_s = min(sequential_s, time.perf_counter() - start)
        console.print(f"batch of {BATCH}: {batch_s:.2f} s, {BATCH} sequential runs: {sequential_s:.2f} s")
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
    ratios = {name: best[name] / best["bare"] for name in ("in-process", "http")}
    return {
        "clients": SERVE_CLIENTS,
        "runs": len(questions),
        "runs_s": best,
        "ratios": ratios,
        "meets": all(r >= SERVE_GOAL for r in ratios.values()),
        "batch_s": batch_s,
        "sequential_s": sequential_s,
        "batch_speedup": sequential_s / batch_s,
    }


def show(opt: dict[str, Any] | None, ev: dict[str, Any] | None, serve: dict[str, Any] | None, console: Console) -> None:
    table = Table(title="RAG example: MIPROv2 by class as a heavy job vs a bare driver; evaluate vs pool sizes; served")
    for column in ("measure", "unit", "measured", "anchor", "anchor value", "ratio", "goal"):
        table.add_column(column, justify="right" if column in ("measured", "anchor value", "ratio") else "left")
    if opt is not None:
        optimize_rows(table, opt)
    if ev is not None:
        evaluate_rows(table, ev)
    if serve is not None:
        serve_rows(table, serve)
    console.print(table)


def optimize_rows(table: Table, opt: dict[str, Any]) -> None:
    table.add_row(
        "MIPROv2 of RAG as a heavy job",
        "s",
        f"{opt['heavy_s']:.2f}",
        "bare driver compile",
        f"{opt['bare_s']:.2f}",
        f"{opt['ratio']:.2f}",
        f"<= {GOAL}",
    )


def evaluate_rows(table: Table, ev: dict[str, Any]) -> None:
    base = ev["examples_s"]["1 light, 1 retrieval"]
    for key, value in ev["examples_s"].items():
        table.add_row(
            f"evaluate, {key}",
            "examples/s",
            f"{value:.2f}",
            "1 light, 1 retrieval",
            f"{base:.2f}",
            f"{value / base:.2f}",
            "-",
        )


def serve_rows(table: Table, serve: dict[str, Any]) -> None:
    bare = serve["runs_s"]["bare"]
    for name in ("in-process", "http"):
        rate = serve["runs_s"][name]
        row = f"served runs, {name}"
        table.add_row(
            row, "runs/s", f"{rate:.2f}", "bare driver, same pools", f"{bare:.2f}", f"{rate / bare:.2f}", ">= 0.9"
        )
    table.add_row(
        f"batch of {BATCH}",
        "s",
        f"{serve['batch_s']:.2f}",
        f"{BATCH} sequential runs",
        f"{serve['sequential_s']:.2f}",
        f"{serve['batch_s'] / serve['sequential_s']:.2f}",
        "-",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed run per side (a smoke run)")
    parser.add_argument("--only", choices=["optimize", "evaluate", "serve"], help="run one part (its rows only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "programs.json")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    console = Console(width=None if sys.stdout.isatty() else 160)
    import dspy

    dspy.disable_logging()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="programs-bench-") as tmp:
            model_dir = build_tiny_model(Path(tmp) / "tiny")
            data = {
                "ray": {"namespace": namespace},
                "state_dir": str(Path(tmp) / "state"),
                "code": ["examples"],
                "pools": all_pools(model_dir),
            }
            orch = orchestrator.start(parse_config(data, source="bench/programs.py", base_dir=ROOT))
            try:
                for pool in ("retrieval", "retrieval2"):
                    orch.submit(pool, "corpus_build", name="pydocs", docs=corpus()).result(timeout=600)
                parts = [args.only] if args.only else ["optimize", "evaluate", "serve"]
                opt = measure_optimize(orch, rounds, console) if "optimize" in parts else None
                ev = measure_evaluate(orch, rounds, console) if "evaluate" in parts else None
                serve = measure_serving(orch, namespace, rounds, console, Path(tmp)) if "serve" in parts else None
            finally:
                orch.shutdown(drain_s=5.0)
    finally:
        ray.shutdown()
    show(opt, ev, serve, console)
    report = {
        "benchmark": "programs",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": time.perf_counter() - started,
        "machine": machine(ray_num_cpus=4, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "model": "random Llama from build_tiny_model, one torch thread per light actor; MiniLM retrieval",
        "params": {"rounds": rounds, "optimizer": BUDGET, "eval_threads": EVAL_THREADS},
        "anchors": {
            "optimize": "dspy.MIPROv2(...).compile of examples.rag.program.RAG in the driver, PoolLM('light/tiny') "
            "under dspy.JSONAdapter, the same PoolRetriever corpus, budget, seed and rows",
            "evaluate": "the same evaluate job on one light and one retrieval actor",
            "serve": "the RAG class called by 8 threads in the driver: PoolLM('light/tiny'), the same corpus",
        },
        "goals": {"optimize_ratio_max": GOAL, "serve_ratio_min": SERVE_GOAL},
        "optimize": opt,
        "evaluate": ev,
        "serve": serve,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
