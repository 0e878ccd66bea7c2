"""Heavy pool: a MIPROv2 run as a job vs the same run in a bare driver, and evaluation throughput vs light actors.

Run from the repository root (with the project's venv active; needs dspy, optuna, torch and transformers):

    python bench/heavy.py                  # 5 rounds each (~3.5 min on 2 cores), writes bench/results/heavy.json
    python bench/heavy.py --quick          # one timed run per side, a smaller devset (a smoke run)

One local Ray (4 logical CPUs) holds an orchestrator with three pools, each
``num_cpus`` 0.25 as in tests/test_heavy.py: ``light`` (one ``workers.light:Light``
actor serving a random tiny Llama, one torch thread, constrained JSON decoding),
``light2`` (the same, two actors) and ``heavy`` (one ``workers.heavy:Heavy`` actor).

1. Optimization: the same small MIPROv2 search (4 trials, 2 candidates, one
   bootstrapped and one labeled demo, minibatches of 2, a full evaluation every
   2 trials, 4 threads, seed 9) over the same 8 rows (MIPROv2 splits its valset
   off them) and the same model ``light/tiny``, (a) submitted as an
   ``optimize`` job to the heavy pool, timed from submit to result, and (b) run
   in this driver: ``dspy.MIPROv2(...).compile`` with a ``PoolLM`` on the same
   pool under DSPy's JSON adapter. The sides take turns (order swapped each
   round) after an untimed warm-up round. Goal: heavy / bare <= 1.1.
2. Evaluation throughput: an ``evaluate`` job (16 threads) over a devset,
   examples/s with the model served by one light actor (``light/tiny``) and by
   two (``light2/tiny``), taking turns. The ratio shows how far the heavy pool's
   concurrent calls spread over a larger light pool.

Best of the timed runs is reported (all runs are in the JSON). The calls each
run made to the light pool are counted from its actors' call counters (a heavy
job's count includes the two ``models`` look-ups of its argument check). The
bare side runs with DSPy's logging off and its progress bars sent to /dev/null.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/heavy.py`: bench.common must import

import orchestrator  # noqa: E402
from bench.common import machine, wait_until, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.models.tiny import build_tiny_model  # noqa: E402

OPTIMIZE_GOAL = 1.1
HEALTH_PERIOD_S = 0.5
PROGRAM = {"signature": "question -> answer"}
ROWS = json.loads((ROOT / "examples" / "arith.json").read_text())  # the README's toy task (8 rows)
BUDGET: dict[str, Any] = {
    "num_trials": 4,
    "num_candidates": 2,
    "max_bootstrapped_demos": 1,
    "max_labeled_demos": 1,
    "minibatch_size": 2,
    "minibatch_full_eval_steps": 2,
    "num_threads": 4,
    "seed": 9,
}
EVAL_THREADS = 16


def devset(n: int) -> list[dict[str, str]]:
    """``n`` addition questions (the tiny random model answers them wrong: only the calls matter here)."""
    return [{"question": f"What is {i} plus {2 * i + 3}?", "answer": str(3 * i + 3)} for i in range(n)]


def pools(model_dir: Path) -> dict[str, Any]:
    small = {"num_cpus": 0.25}

    def light(size: int) -> dict[str, Any]:
        return {
            "worker": "workers.light:Light",
            "env_manager": "none",  # this venv, as the bare side has: no per-pool env built from envs/
            "size": size,
            "resources": small,
            "limits": {"concurrency": 16, "call_timeout_s": 120},
            "health": {"period_s": HEALTH_PERIOD_S},  # call counters in status stay fresh
            "options": {"model": str(model_dir), "name": "tiny", "threads": 1, "json_max_string": 24},
        }

    return {
        "light": light(1),
        "light2": light(2),
        "heavy": {
            "worker": "workers.heavy:Heavy",
            "env_manager": "none",
            "resources": small,
            "health": {"period_s": HEALTH_PERIOD_S, "timeout_s": 10},
            "sessions": {"per_worker": 1},
            "options": {"model": "light/tiny"},
        },
    }


def calls(orch: orchestrator.Orchestrator, pool: str) -> int:
    """Calls the pool's actors have served (from their health reports), once the count has settled."""

    def count() -> int:
        return sum(int(a["calls"]) for a in orch.status()[pool]["actors"])

    seen: list[int] = []

    def settled() -> bool:
        seen.append(count())
        return len(seen) >= 3 and seen[-1] == seen[-3]

    wait_until(settled, timeout=30, what=f"the {pool} pool's call count to settle", period=HEALTH_PERIOD_S * 1.5)
    return seen[-1]


# ---------------------------------------------------------------- optimization
def run_job(orch: orchestrator.Orchestrator, op: str, **args: Any) -> tuple[Any, dict[str, Any]]:
    """Submit a heavy-pool job and wait for its result: the result, and the seconds from submit to result
    split by the job's record (``queued_s``: submit to start on the actor, ``running_s``: start to finish,
    ``result_s``: finish to the result reaching this driver)."""
    wall0, start = time.time(), time.perf_counter()
    job = orch.submit("heavy", op, **args)
    result = job.result(timeout=600)
    seconds, wall1 = time.perf_counter() - start, time.time()
    record = job.status()
    return result, {
        "seconds": seconds,
        "queued_s": record["started"] - wall0,
        "running_s": record["finished"] - record["started"],
        "result_s": wall1 - record["finished"],
        "events": record["events"],
    }


def heavy_optimize(orch: orchestrator.Orchestrator) -> dict[str, Any]:
    """The search as a heavy-pool job, submit to result."""
    result, timing = run_job(orch, "optimize", program=PROGRAM, trainset=ROWS, model="light/tiny", optimizer=BUDGET)
    return {**timing, "score": result["score"], "baseline": result["baseline"], "trials": result["trials"]}


def exact_match(example: Any, prediction: Any, trace: Any = None) -> float:
    return float(str(example.answer).strip().lower() == str(getattr(prediction, "answer", "") or "").strip().lower())


def bare_optimize(orch: orchestrator.Orchestrator) -> dict[str, Any]:
    """The same search in this process: DSPy's MIPROv2 calling the light pool through a PoolLM."""
    import dspy

    from orchestrator.dspy import PoolLM

    start = time.perf_counter()
    lm = PoolLM("light/tiny", orch)
    trainset = [dspy.Example(**row).with_inputs("question") for row in ROWS]
    adapter = dspy.JSONAdapter()
    # DSPy's progress bars and prints go nowhere (the heavy side's go to its actor's log file).
    with (
        open(os.devnull, "w") as quiet,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        dspy.context(lm=lm, adapter=adapter),
    ):
        optimizer = dspy.MIPROv2(
            metric=exact_match,
            prompt_model=lm,
            task_model=lm,
            auto=None,
            num_candidates=BUDGET["num_candidates"],
            max_bootstrapped_demos=BUDGET["max_bootstrapped_demos"],
            max_labeled_demos=BUDGET["max_labeled_demos"],
            num_threads=BUDGET["num_threads"],
            seed=BUDGET["seed"],
        )
        program = optimizer.compile(
            dspy.Predict("question -> answer"),
            trainset=trainset,
            num_trials=BUDGET["num_trials"],
            minibatch_size=BUDGET["minibatch_size"],
            minibatch_full_eval_steps=BUDGET["minibatch_full_eval_steps"],
        )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "score": getattr(program, "score", None)}


def measure_optimize(orch: orchestrator.Orchestrator, rounds: int, console: Console) -> dict[str, Any]:
    sides = {"heavy": heavy_optimize, "bare": bare_optimize}
    runs: dict[str, list[dict[str, Any]]] = {"heavy": [], "bare": []}
    warmup: dict[str, float] = {}
    for r in range(rounds + 1):  # round 0: warm-up (imports, first optuna study, the pool's first batches)
        order = ["heavy", "bare"] if r % 2 else ["bare", "heavy"]
        for name in order:
            before = calls(orch, "light")
            run = sides[name](orch)
            run["light_calls"] = calls(orch, "light") - before
            if r == 0:
                warmup[name] = run["seconds"]
            else:
                runs[name].append(run)
            label = "warm-up" if r == 0 else f"round {r}"
            line = f"optimize {label}, {name}: {run['seconds']:.2f} s, {run['light_calls']} light calls"
            if name == "heavy":
                line += f" (queued {run['queued_s']:.2f}, ran {run['running_s']:.2f}, result {run['result_s']:.2f})"
            console.print(line)
    heavy = min(run["seconds"] for run in runs["heavy"])
    bare = min(run["seconds"] for run in runs["bare"])
    return {
        "heavy_s": heavy,
        "bare_s": bare,
        "ratio": heavy / bare,
        "goal": f"<= {OPTIMIZE_GOAL}",
        "meets": heavy / bare <= OPTIMIZE_GOAL,
        "heavy_median_s": statistics.median(run["seconds"] for run in runs["heavy"]),
        "bare_median_s": statistics.median(run["seconds"] for run in runs["bare"]),
        "heavy_phases_median_s": {
            phase: statistics.median(run[phase] for run in runs["heavy"])
            for phase in ("queued_s", "running_s", "result_s")
        },
        "warmup_s": warmup,
        "runs": runs,
    }


# ------------------------------------------------------------------ evaluation
def evaluate(orch: orchestrator.Orchestrator, model: str, rows: list[dict[str, str]]) -> dict[str, Any]:
    """One evaluate job over ``rows``, submit to result."""
    result, timing = run_job(orch, "evaluate", program=PROGRAM, devset=rows, model=model, num_threads=EVAL_THREADS)
    errors = sum(1 for r in result["results"] if "error" in r)
    if len(result["results"]) != len(rows) or errors:
        raise RuntimeError(f"evaluate on {model}: {len(result['results'])}/{len(rows)} results, {errors} errors")
    return {**timing, "examples_s": len(rows) / timing["seconds"], "score": result["score"]}


def measure_evaluate(orch: orchestrator.Orchestrator, n: int, rounds: int, console: Console) -> dict[str, Any]:
    rows = devset(n)
    models = {1: ("light", "light/tiny"), 2: ("light2", "light2/tiny")}
    for _, model in models.values():  # warm up both pools' actors
        evaluate(orch, model, rows[: 2 * EVAL_THREADS])
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for r in range(rounds):
        for actors in [1, 2] if r % 2 == 0 else [2, 1]:
            pool, model = models[actors]
            before = calls(orch, pool)
            run = evaluate(orch, model, rows)
            run["light_calls"] = calls(orch, pool) - before
            runs[actors].append(run)
            console.print(f"evaluate round {r + 1}, {actors} light actor(s): {run['examples_s']:.2f} examples/s")
    batches = {actors: orch.call(pool, "stats")["batch_sizes"] for actors, (pool, _) in models.items()}  # one actor
    best = {actors: max(run["examples_s"] for run in runs[actors]) for actors in runs}
    return {
        "devset": n,
        "threads": EVAL_THREADS,
        "examples_s": best,
        "ratio": best[2] / best[1],
        "runs": runs,
        "recent_batch_sizes_of_one_actor": batches,
    }


# ------------------------------------------------------------------------- run
def show(opt: dict[str, Any], ev: dict[str, Any], console: Console) -> None:
    table = Table(title="heavy pool: MIPROv2 as a job vs a bare driver; evaluate vs light pool size")
    for column in ("measure", "unit", "measured", "anchor", "anchor value", "ratio", "goal", "verdict"):
        table.add_column(column, justify="right" if column in ("measured", "anchor value", "ratio") else "left")
    verdict = "[green]meets goal[/]" if opt["meets"] else "[red]misses goal[/]"
    table.add_row(
        "MIPROv2 run as a heavy job (submit -> result)",
        "s",
        f"{opt['heavy_s']:.2f}",
        "bare driver MIPROv2.compile",
        f"{opt['bare_s']:.2f}",
        f"{opt['ratio']:.2f}",
        opt["goal"],
        verdict,
    )
    table.add_row(
        f"evaluate, {ev['devset']} examples, 2 light actors",
        "examples/s",
        f"{ev['examples_s'][2]:.2f}",
        "1 light actor",
        f"{ev['examples_s'][1]:.2f}",
        f"{ev['ratio']:.2f}",
        "-",
        "-",
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed run per side, a smaller devset (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heavy.json")
    args = parser.parse_args()
    p = {"optimize_rounds": 1, "eval_rounds": 1, "devset": 32} if args.quick else {}
    p = p or {"optimize_rounds": 5, "eval_rounds": 5, "devset": 48}
    console = Console(width=None if sys.stdout.isatty() else 160)  # don't wrap the table when piped
    import dspy

    dspy.disable_logging()  # the bare side's MIPROv2 logs every step otherwise
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="heavy-bench-") as tmp:
            model_dir = build_tiny_model(Path(tmp) / "tiny")
            config = parse_config(
                {"ray": {"namespace": namespace}, "state_dir": str(Path(tmp) / "state"), "pools": pools(model_dir)},
                source="bench/heavy.py",
                base_dir=ROOT,
            )
            orch = orchestrator.start(config)
            try:
                opt = measure_optimize(orch, p["optimize_rounds"], console)
                ev = measure_evaluate(orch, p["devset"], p["eval_rounds"], console)
            finally:
                orch.shutdown(drain_s=5.0)
    finally:
        ray.shutdown()
    show(opt, ev, console)
    report = {
        "benchmark": "heavy",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "duration_s": time.perf_counter() - started,
        "machine": machine(ray_num_cpus=4, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "model": "random Llama from build_tiny_model (hidden 64, 2 layers), one torch thread per light actor",
        "params": {**p, "optimizer": BUDGET, "trainset": len(ROWS), "eval_threads": EVAL_THREADS},
        "pools": "light: 1 x workers.light:Light, light2: 2 x the same, heavy: 1 x workers.heavy:Heavy; "
        "num_cpus 0.25 each, light concurrency 16, health 0.5 s, env_manager none (this venv)",
        "anchors": {
            "optimize": "dspy.MIPROv2(...).compile in the driver with PoolLM('light/tiny') as prompt and task "
            "model under dspy.JSONAdapter, exact match on answer, same budget, seed and trainset",
            "evaluate": "the same evaluate job with the model served by a one-actor light pool",
        },
        "goals": {"optimize_ratio_max": OPTIMIZE_GOAL},
        "optimize": opt,
        "evaluate": ev,
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
