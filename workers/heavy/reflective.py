"""GEPA (reflective prompt evolution) as a resumable job: DSPy's own ``dspy.GEPA``, checkpointed per iteration.

GEPA runs its whole search inside ``compile``; that runs in a thread
(:class:`~workers.heavy.handoff.Handoff`), and GEPA's callbacks hand what the
job needs to the job's generator, so events are yielded and checkpoints taken
in the generator, in GEPA's order:

- the seed program's valset score (the baseline), once;
- at the start of every iteration GEPA saves its state (``gepa_state.bin`` in its
  ``log_dir``); that file's bytes become the job's checkpoint, so the state
  travels with the checkpoint (no shared disk needed) and a re-run writes it into
  a fresh ``log_dir`` from which GEPA resumes;
- after every iteration, one event ``{"iteration", "accepted", "score", "best",
  "candidates", "metric_calls", "updated"}`` (``updated``: the predictors, by name, whose
  instructions the iteration proposed) and progress in metric calls.

A resumed run does not score the seed program on the valset again: GEPA scores
the seed before it loads a saved state, so the evaluation policy gives it one
example only (DSPy refuses an empty batch); the loaded state then replaces it.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from orchestrator import Context
from workers.heavy.handoff import Handoff
from workers.heavy.metrics import Metric
from workers.heavy.programs import Budget

dspy: Any = importlib.import_module("dspy")
Events = Generator[dict[str, Any], None, dict[str, Any]]
STATE_FILE = "gepa_state.bin"


def feedback_metric(metric: Metric) -> Metric:
    """``metric`` as GEPA calls it, ``(gold, pred, trace, pred_name, pred_trace)``: a metric taking only
    ``(example, prediction, trace=None)`` is wrapped (GEPA then writes the score as its feedback)."""
    try:
        inspect.signature(metric).bind(None, None, None, None, None)
        return metric
    except TypeError:

        def scored(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
            return metric(gold, pred, trace)

        return scored


class Callbacks:
    """GEPA's callbacks (``gepa.core.callbacks.GEPACallback``) and stop condition, handed to the job."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff
        self.updated: list[str] = []

    def __call__(self, gepa_state: Any) -> bool:
        """GEPA's stop condition: the job was cancelled or abandoned."""
        return self.handoff.stopping

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        if event["iteration"] == 0:
            self.handoff.hand("baseline", float(event["average_score"]))

    def on_proposal_start(self, event: dict[str, Any]) -> None:
        self.updated = list(event["components"])  # the predictors this iteration proposes instructions for

    def on_state_saved(self, event: dict[str, Any]) -> None:
        self.handoff.hand("saved", (event["iteration"], event["run_dir"]))

    def on_iteration_end(self, event: dict[str, Any]) -> None:
        state = event["state"]
        scores = list(state.program_full_scores_val_set)
        self.handoff.hand(
            "iteration",
            {
                "iteration": event["iteration"] - 1,  # GEPA counts from 1, with the seed as iteration 0
                "accepted": bool(event["proposal_accepted"]),
                "score": scores[-1] if event["proposal_accepted"] else None,
                "best": max(scores),
                "candidates": len(scores),
                "metric_calls": int(state.total_num_evals),
                "updated": self.updated,  # by predictor name; none for a merge
            },
        )
        self.updated = []


eval_policy: Any = importlib.import_module("gepa.strategies.eval_policy")


class SeedOnce(eval_policy.FullEvaluationPolicy):
    """GEPA's full-valset evaluation policy, except that a resumed run scores the seed on one example only."""

    def __init__(self, resuming: bool) -> None:
        super().__init__()
        self.resuming = resuming

    def get_seed_eval_batch(self, loader: Any) -> list[Any]:
        ids = list(loader.all_ids())
        return ids[:1] if self.resuming else ids


def gepa(
    ctx: Context,
    student: Any,
    trainset: list[Any],
    valset: list[Any] | None,
    metric: Metric,
    task_lm: Any,
    reflection_lm: Any,
    budget: Budget,
) -> Events:
    """Evolve ``student``'s instructions (each predictor's) with GEPA; yields the baseline and one event per
    iteration; returns the best program (a module) and its score."""
    state: dict[str, Any] = ctx.resume or {}
    log_dir = Path(tempfile.mkdtemp(prefix="gepa-"))  # fresh: only the checkpointed state is resumed
    if "gepa_state" in state:
        (log_dir / STATE_FILE).write_bytes(state["gepa_state"])
    callbacks = Callbacks(Handoff(ctx))
    if budget.auto:
        limit: dict[str, Any] = {"auto": budget.auto}
    elif budget.max_metric_calls:
        limit = {"max_metric_calls": budget.max_metric_calls}
    else:
        limit = {"max_full_evals": budget.num_trials}
    optimizer = dspy.GEPA(
        metric=feedback_metric(metric),
        reflection_lm=reflection_lm,
        reflection_minibatch_size=budget.reflection_minibatch_size,
        use_merge=budget.use_merge,
        num_threads=budget.num_threads,
        seed=budget.seed,
        log_dir=str(log_dir),
        track_stats=True,
        warn_on_score_mismatch=False,
        gepa_kwargs={
            "callbacks": [callbacks],
            "stop_callbacks": [callbacks],
            "val_evaluation_policy": SeedOnce("gepa_state" in state),
        },
        **limit,
    )

    def compile_program() -> Any:
        with dspy.context(lm=task_lm, adapter=dspy.JSONAdapter()):  # every call constrained to its output schema
            return optimizer.compile(student, trainset=trainset, valset=valset)

    if "gepa_state" not in state:
        yield {"stage": "baseline"}
    try:
        for kind, payload in callbacks.handoff.items(compile_program, "gepa"):
            if kind == "done":
                best = payload
            elif kind == "baseline" and "baseline" not in state:
                state["baseline"] = payload
                yield {"stage": "iterations", "baseline": payload, "total": optimizer.max_metric_calls}
            elif kind == "saved" and payload[0] != state.get("saved"):
                state["saved"] = payload[0]
                state["gepa_state"] = (Path(payload[1]) / STATE_FILE).read_bytes()
                ctx.checkpoint(state)
            elif kind == "iteration":
                state["iterations"] = payload["iteration"] + 1
                total = max(payload["metric_calls"], optimizer.max_metric_calls)
                ctx.progress(done=payload["metric_calls"], total=total)
                yield payload
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    found = best.detailed_results
    return {
        "program": best,
        "score": found.val_aggregate_scores[found.best_idx],
        "baseline": found.val_aggregate_scores[0],
        "trials": state.get("iterations", 0),
        "candidates": len(found.val_aggregate_scores),  # the seed and each accepted proposal
        "metric_calls": found.total_metric_calls,
    }
