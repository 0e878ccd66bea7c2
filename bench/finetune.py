"""Fine-tuning throughput: a LoRA ``finetune`` job on the heavy pool vs bare trl in this process, same run.

Run from the repository root (with the project's venv active; needs torch, transformers, trl, peft, datasets):

    python bench/finetune.py                  # 3 repeats (~1 min on 2 cores), writes bench/results/finetune.json
    python bench/finetune.py --repeats 1      # a smoke run
    python bench/finetune.py --steps 400      # longer runs: fixed costs (loading, saving) weigh less
    python bench/finetune.py --model PATH     # a real local model folder instead of the tiny random one

One local Ray (4 logical CPUs) holds an orchestrator with two pools, each
``num_cpus`` 0.25 as in tests/test_finetune.py: ``llm`` (one ``workers.light:Light``
actor serving a random tiny Llama as ``llm/tiny``, idle while training) and
``heavy`` (one ``workers.heavy:Heavy`` actor, ``env_manager: none``: this venv).

Both sides train the same LoRA adapter on the same 64 synthetic chat rows with
the same settings (``HYPER``: 150 steps (``--steps``), batch 4, seed 42, a
checkpoint every 10 steps, a log line every step, the rest ``Hyper``'s
defaults) on CPU, with the same torch thread count (``--threads``:
``torch.set_num_threads`` here, ``OMP_NUM_THREADS`` in the pool):

- pool: ``orch.submit("heavy", "finetune", model=..., training_data=rows,
  hyperparameters=HYPER)``, timed from submit to result. That span holds the
  whole job: loading the model, tokenizing the rows, training, saving the
  adapter and, for a pool model, publishing it to the light pool (``load_adapter``).
  trl's own ``train_steps_per_second`` (inside ``trainer.train``) comes back in
  the job's metrics.
- bare: ``trl.SFTTrainer`` built from ``workers.heavy.finetune``'s own
  ``sft_config`` and ``lora_config`` (the settings the job trains with, not a
  copy), ``trainer.train()`` timed alone. Model loading, trainer set-up and
  saving the adapter are timed too, for context.

Each side's steps/s is the median of ``--repeats`` runs (the sides take turns,
order swapped each round, after an untimed short warm-up of each: imports, the
first trainer). Ratios are pool / bare. Goal: >= 0.95.

Where the job's extra time goes: inside ``train`` the trainer thread waits for
each log line to be handed to the job (``workers/heavy/handoff.py``) and for each
checkpoint to be stored (the coordinator first logs every earlier event, then
fsyncs); outside it, publishing the adapter to the light pool. With the tiny
model a step takes ~35 ms, so these weigh far more than with a real model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/finetune.py`: bench.common must import

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from bench.heavy import run_job  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.models.tiny import build_tiny_model  # noqa: E402
from workers.heavy.finetune import (  # noqa: E402
    Hyper,
    LoRA,
    lora_config,
    marks_assistant_turns,
    rows_format,
    sft_config,
)

GOAL = 0.95
ROWS_N = 64
HYPER: dict[str, Any] = {"max_steps": 150, "batch_size": 4, "seed": 42, "save_steps": 10, "logging_steps": 1}
WARMUP_STEPS = 4
SYSTEM = "You add numbers. Answer with the sum only."


def chat_rows(n: int) -> list[dict[str, Any]]:
    """``n`` synthetic chat rows (system, user, assistant): additions, the assistant answering with the sum."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"What is {i} plus {3 * i + 7}?"},
                {"role": "assistant", "content": str(4 * i + 7)},
            ]
        }
        for i in range(n)
    ]


def pools(model_dir: Path, threads: int) -> dict[str, Any]:
    small = {"num_cpus": 0.25}
    return {
        "llm": {
            "worker": "workers.light:Light",
            "env_manager": "none",
            "resources": small,
            "options": {"model": str(model_dir), "name": "tiny", "threads": 1},
        },
        "heavy": {
            "worker": "workers.heavy:Heavy",
            "env_manager": "none",  # this venv, as the bare side has: a pool named heavy would build envs/heavy
            "resources": small,
            "env_vars": {"OMP_NUM_THREADS": str(threads)},  # torch's thread count, as set on the bare side
            "health": {"period_s": 5, "timeout_s": 60},
            "options": {"model": "llm/tiny"},
        },
    }


# ------------------------------------------------------------------------ sides
def pool_finetune(
    orch: orchestrator.Orchestrator, model: str, rows: list[dict[str, Any]], hyper: dict[str, Any], name: str
) -> dict[str, Any]:
    """One finetune job, submit to result: steps/s end to end and trl's in-trainer figure."""
    result, timing = run_job(orch, "finetune", model=model, training_data=rows, hyperparameters=hyper, name=name)
    steps, metrics = int(result["steps"]), result["metrics"]
    return {
        **timing,
        "steps": steps,
        "steps_s": steps / timing["seconds"],
        "trl_steps_s": float(metrics["train_steps_per_second"]),
        "trl_train_runtime_s": float(metrics["train_runtime"]),
        "train_loss": metrics.get("train_loss"),
        "published_as": result.get("model"),
    }


def bare_finetune(source: Path, rows: list[dict[str, Any]], hyper: dict[str, Any], work: Path) -> dict[str, Any]:
    """The same training in this process with trl alone: steps / wall time of ``trainer.train()``."""
    transformers: Any = importlib.import_module("transformers")
    trl: Any = importlib.import_module("trl")
    peft: Any = importlib.import_module("peft")
    datasets: Any = importlib.import_module("datasets")

    settings = Hyper(**hyper)
    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(source))
    assistant_only = rows_format(rows, "training_data") == "chat" and marks_assistant_turns(trl, tokenizer)
    # CPU, as in the pool: its actor has no GPU share.
    config = sft_config(trl, settings, work / "trainer", assistant_only, evaluate=False, cuda=False, bf16=False)
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(peft, LoRA()),
    )
    ready = time.perf_counter()
    # trl prints each log line: here to /dev/null, in the pool's actor to its log file.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        outcome = trainer.train()
    trained = time.perf_counter()
    trainer.model.save_pretrained(str(work / "adapter"))
    tokenizer.save_pretrained(str(work / "adapter"))
    saved = time.perf_counter()
    steps = int(trainer.state.global_step)
    return {
        "steps": steps,
        "setup_s": ready - start,
        "train_s": trained - ready,
        "save_s": saved - trained,
        "seconds": saved - start,
        "steps_s": steps / (trained - ready),
        "end_to_end_steps_s": steps / (saved - start),
        "trl_steps_s": float(outcome.metrics["train_steps_per_second"]),
        "trl_train_runtime_s": float(outcome.metrics["train_runtime"]),
        "train_loss": outcome.metrics.get("train_loss"),
    }


# ---------------------------------------------------------------------- measure
def measure(
    orch: orchestrator.Orchestrator,
    source: Path,
    model: str,
    hyper: dict[str, Any],
    repeats: int,
    work: Path,
    console: Console,
) -> dict[str, Any]:
    rows = chat_rows(ROWS_N)
    warm = {**hyper, "max_steps": WARMUP_STEPS}
    # Warm-up: the driver's imports and first trainer, the actor's lazy trl import and first job.
    bare_finetune(source, rows, warm, work / "warm")
    pool_finetune(orch, model, rows, warm, "bench-warm")
    runs: dict[str, list[dict[str, Any]]] = {"pool": [], "bare": []}
    for r in range(repeats):
        for side in ("pool", "bare") if r % 2 else ("bare", "pool"):
            if side == "pool":
                run = pool_finetune(orch, model, rows, hyper, f"bench-{r}")
                line = (
                    f"round {r + 1}, pool: {run['steps_s']:.2f} steps/s end to end, trl {run['trl_steps_s']:.2f} "
                    f"(queued {run['queued_s']:.2f} s, ran {run['running_s']:.2f} s, result {run['result_s']:.2f} s)"
                )
            else:
                run = bare_finetune(source, rows, hyper, work / f"bare-{r}")
                line = (
                    f"round {r + 1}, bare: {run['steps_s']:.2f} steps/s in train(), trl {run['trl_steps_s']:.2f} "
                    f"(set-up {run['setup_s']:.2f} s, train {run['train_s']:.2f} s, save {run['save_s']:.2f} s)"
                )
            if run["steps"] != hyper["max_steps"]:
                raise RuntimeError(f"{side} ran {run['steps']} steps, not {hyper['max_steps']}")
            runs[side].append(run)
            console.print(line)

    def median(side: str, key: str) -> float:
        return statistics.median(float(run[key]) for run in runs[side])

    def row(name: str, pool: float, anchor: str, bare: float, goal: bool) -> dict[str, Any]:
        return {
            "name": name,
            "anchor": anchor,
            "pool_steps_s": pool,
            "bare_steps_s": bare,
            "ratio": pool / bare,
            "goal": f">= {GOAL}" if goal else "-",
            "meets": pool / bare >= GOAL if goal else None,
        }

    results = [
        row(
            "finetune job, submit -> result",
            median("pool", "steps_s"),
            "bare trainer.train() wall time",
            median("bare", "steps_s"),
            goal=True,
        ),
        row(
            "finetune job, trl train_steps_per_second",
            median("pool", "trl_steps_s"),
            "bare trl train_steps_per_second",
            median("bare", "trl_steps_s"),
            goal=True,
        ),
        row(
            "finetune job, submit -> result",
            median("pool", "steps_s"),
            "bare load + set-up + train + save",
            median("bare", "end_to_end_steps_s"),
            goal=False,
        ),
    ]
    return {
        "results": results,
        "pool_phases_median_s": {k: median("pool", k) for k in ("seconds", "queued_s", "running_s", "result_s")},
        "pool_trl_train_runtime_median_s": median("pool", "trl_train_runtime_s"),
        "bare_phases_median_s": {k: median("bare", k) for k in ("seconds", "setup_s", "train_s", "save_s")},
        "runs": runs,
    }


# -------------------------------------------------------------------------- run
def show(measured: dict[str, Any], console: Console) -> None:
    table = Table(title="heavy pool: LoRA finetune steps/s, job vs bare trl (CPU, same model, rows and settings)")
    for column in ("measure", "unit", "measured", "anchor", "anchor value", "ratio", "goal", "verdict"):
        table.add_column(column, justify="right" if column in ("measured", "anchor value", "ratio") else "left")
    for r in measured["results"]:
        verdict = "-" if r["meets"] is None else "[green]meets goal[/]" if r["meets"] else "[red]misses goal[/]"
        table.add_row(
            r["name"],
            "steps/s",
            f"{r['pool_steps_s']:.2f}",
            r["anchor"],
            f"{r['bare_steps_s']:.2f}",
            f"{r['ratio']:.2f}",
            r["goal"],
            verdict,
        )
    console.print(table)
    pool, bare = measured["pool_phases_median_s"], measured["bare_phases_median_s"]
    console.print(
        f"medians: pool {pool['seconds']:.2f} s submit -> result (queued {pool['queued_s']:.2f}, "
        f"ran {pool['running_s']:.2f} of which trl train {measured['pool_trl_train_runtime_median_s']:.2f}, "
        f"result {pool['result_s']:.2f}); bare {bare['seconds']:.2f} s (set-up {bare['setup_s']:.2f}, "
        f"train {bare['train_s']:.2f}, save {bare['save_s']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (medians are reported)")
    parser.add_argument("--model", type=Path, default=None, help="a local model folder (default: the tiny random one)")
    parser.add_argument("--steps", type=int, default=HYPER["max_steps"], help="training steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "finetune.json")
    args = parser.parse_args()
    hyper = {**HYPER, "max_steps": args.steps}
    console = Console(width=None if sys.stdout.isatty() else 180)  # don't wrap the table when piped
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    datasets: Any = importlib.import_module("datasets")
    torch.set_num_threads(args.threads)
    # The bare side stays quiet (the pool's actor writes its warnings and bars to its log file).
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)  # trl passes arguments transformers deprecates
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
            tiny = build_tiny_model(Path(tmp) / "tiny")
            # A folder given with --model is trained from directly on both sides (the job then publishes nowhere).
            source, model = (args.model.resolve(), str(args.model.resolve())) if args.model else (tiny, "llm/tiny")
            config = parse_config(
                {
                    "ray": {"namespace": namespace},
                    "state_dir": str(Path(tmp) / "state"),
                    "pools": pools(tiny, args.threads),
                },
                source="bench/finetune.py",
                base_dir=ROOT,
            )
            orch = orchestrator.start(config)
            try:
                measured = measure(orch, source, model, hyper, args.repeats, Path(tmp) / "bare", console)
            finally:
                orch.shutdown(drain_s=5.0)
    finally:
        ray.shutdown()
    show(measured, console)
    report = {
        "benchmark": "finetune",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repeats": args.repeats,
        "duration_s": time.perf_counter() - started,
        "machine": machine(
            ray_num_cpus=4,
            loadavg_before=load_before,
            loadavg_after=os.getloadavg(),
            torch=torch.__version__,
            transformers=transformers.__version__,
            trl=importlib.import_module("trl").__version__,
            peft=importlib.import_module("peft").__version__,
        ),
        "model": str(args.model or "random Llama from build_tiny_model (hidden 64, 2 layers), served as llm/tiny"),
        "params": {"rows": ROWS_N, "hyperparameters": hyper, "warmup_steps": WARMUP_STEPS, "threads": args.threads},
        "pools": "llm: 1 x workers.light:Light (tiny, one thread), heavy: 1 x workers.heavy:Heavy; num_cpus 0.25 "
        "each, env_manager none (this venv), OMP_NUM_THREADS = threads in heavy",
        "anchors": {
            "bare": "trl.SFTTrainer in the driver with workers.heavy.finetune.sft_config / lora_config (LoRA() "
            "defaults), the same rows and hyperparameters, on CPU; steps / trainer.train() wall time",
            "bare_trl": "trl's train_steps_per_second from the bare trainer.train() metrics",
        },
        "goals": {"ratio_min": GOAL},
        **measured,
        "all_goals_met": all(r["meets"] for r in measured["results"] if r["meets"] is not None),
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
