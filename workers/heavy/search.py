"""MIPROv2 as a resumable job: DSPy's own bootstrap and proposal stages, then a checkpointed trial loop.

MIPROv2 keeps its optuna study in memory and has no per-trial hook, so its
search (step 3) is driven here, the same way: each trial picks one instruction
and one demo set per predictor with a TPE sampler and scores the program on a
minibatch of the valset; every ``minibatch_full_eval_steps`` trials (and at the
end) the best-averaged choice is scored on the whole valset. Steps 1 and 2
(bootstrapping demo sets, proposing instructions) are MIPROv2's own methods.

Checkpoints: the candidates once (after the proposal stage), the baseline, then
every finished trial. A re-run starts from the last one: finished trials are
replayed into a fresh study (``add_trial``) instead of being evaluated again,
and each trial's sampler and minibatch are seeded by the trial number, so a
resumed run asks what an uninterrupted one would have.
"""

from __future__ import annotations

import importlib
import random
import warnings
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orchestrator import Context
from workers.heavy.metrics import Metric
from workers.heavy.programs import Budget

dspy: Any = importlib.import_module("dspy")
Events = Generator[dict[str, Any], None, dict[str, Any]]


@dataclass
class Scored:
    """One example's outcome."""

    index: int
    score: float
    prediction: dict[str, Any]
    error: str | None = None


def score_each(program: Any, devset: list[Any], metric: Metric, lm: Any, threads: int) -> Iterator[Scored]:
    """Run ``program`` on each example (``threads`` at once: concurrent calls the pool batches), in order."""

    def one(index: int) -> Scored:
        example = devset[index]
        try:
            with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
                prediction = program(**example.inputs())
                value = metric(example, prediction, None)
            return Scored(index, float(value), dict(prediction.items()))
        except Exception as exc:  # a failed example scores 0, as DSPy's Evaluate scores it
            return Scored(index, 0.0, {}, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(devset))), thread_name_prefix="evaluate") as pool:
        yield from pool.map(one, range(len(devset)))


def mean_score(program: Any, devset: list[Any], metric: Metric, lm: Any, threads: int) -> float:
    """The metric's mean over ``devset``."""
    scores = [s.score for s in score_each(program, devset, metric, lm, threads)]
    return sum(scores) / len(scores) if scores else 0.0


def schedule(num_trials: int, minibatch: bool, full_every: int) -> list[str]:
    """The kinds of the run's trials, in order: MIPROv2's interleaving of minibatch and full evaluations."""
    if not minibatch:
        return ["full"] * num_trials
    kinds: list[str] = []
    for t in range(1, num_trials + 1):
        kinds.append("minibatch")
        if t % full_every == 0 or t == num_trials:
            kinds.append("full")
    return kinds


def choices(names: list[str], params: dict[str, int]) -> dict[str, dict[str, int | None]]:
    """A trial's parameters by predictor name: ``{"respond": {"instruction": 2, "demos": 0}}``."""
    return {
        name: {"instruction": params[f"{i}_predictor_instruction"], "demos": params.get(f"{i}_predictor_demos")}
        for i, name in enumerate(names)
    }


def with_params(student: Any, state: dict[str, Any], params: dict[str, int]) -> Any:
    """A copy of ``student`` with the chosen instruction (and demo set) per predictor."""
    program = student.deepcopy()
    for i, predictor in enumerate(program.predictors()):
        predictor.signature = predictor.signature.with_instructions(
            state["instructions"][i][params[f"{i}_predictor_instruction"]]
        )
        if state["demos"]:
            predictor.demos = state["demos"][i][params[f"{i}_predictor_demos"]]
    return program


def mipro(
    ctx: Context,
    student: Any,
    trainset: list[Any],
    valset: list[Any] | None,
    metric: Metric,
    task_lm: Any,
    prompt_lm: Any,
    budget: Budget,
) -> Events:
    """Optimize ``student`` (every predictor's instruction and demo set); yields stage and trial events,
    returns the best program (a module) and its score."""
    optuna: Any = importlib.import_module("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    zeroshot = budget.max_bootstrapped_demos == 0 and budget.max_labeled_demos == 0
    candidates = None if budget.auto else budget.num_candidates
    optimizer = dspy.MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        auto=budget.auto,
        num_candidates=candidates,
        max_bootstrapped_demos=budget.max_bootstrapped_demos,
        max_labeled_demos=budget.max_labeled_demos,
        num_threads=budget.num_threads,
        seed=budget.seed,
        max_errors=10**6,  # a failed example scores 0; it does not end the run
    )
    optimizer._set_random_seeds(budget.seed)
    trainset, valset = optimizer._set_and_validate_datasets(trainset, valset)
    num_trials, valset, _, n_instructions, n_demo_sets = optimizer._set_hyperparams_from_run_mode(
        student, None if budget.auto else budget.num_trials, True, zeroshot, valset, candidates, candidates
    )
    minibatch = len(valset) > budget.minibatch_size
    kinds = schedule(num_trials, minibatch, budget.minibatch_full_eval_steps)
    state: dict[str, Any] = ctx.resume or {}
    threads = budget.num_threads
    names = [name for name, _ in student.named_predictors()]  # MIPROv2 numbers them in this order

    with dspy.context(lm=task_lm, adapter=dspy.JSONAdapter()):  # every call constrained to its output schema
        if "instructions" not in state:
            yield {"stage": "bootstrap"}
            demos = optimizer._bootstrap_fewshot_examples(
                student,
                trainset,
                budget.seed,
                None,
                num_fewshot_candidates=n_demo_sets,
                max_bootstrapped_demos=budget.max_bootstrapped_demos,
                max_labeled_demos=budget.max_labeled_demos,
                max_errors=10**6,
                metric_threshold=None,
            )
            yield {"stage": "propose"}
            instructions = optimizer._propose_instructions(
                student, trainset, demos, 10, True, True, True, True, num_instruct_candidates=n_instructions
            )
            state = {"instructions": instructions, "demos": None if zeroshot else demos, "trials": []}
            ctx.checkpoint(state)
        if "baseline" not in state:
            state["baseline"] = mean_score(student, valset, metric, task_lm, threads)
            state["best"] = {"score": state["baseline"], "params": default_params(state)}
            yield {"stage": "trials", "baseline": state["baseline"], "total": len(kinds)}
            ctx.checkpoint(state)

        distributions = {
            name: optuna.distributions.CategoricalDistribution(range(size)) for name, size in sizes(state).items()
        }
        study = optuna.create_study(direction="maximize")
        replay = [{"params": default_params(state), "score": state["baseline"]}, *state["trials"]]
        for done in replay:  # the baseline and finished trials: replayed into the sampler, not evaluated again
            trial = optuna.trial.create_trial(params=done["params"], distributions=distributions, value=done["score"])
            study.add_trial(trial)

        for k in range(len(state["trials"]), len(kinds)):
            if ctx.cancelled:
                break
            if kinds[k] == "full" and minibatch:
                params = best_unevaluated(state["trials"])
                score = mean_score(with_params(student, state, params), valset, metric, task_lm, threads)
                study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=score))
            else:
                study.sampler = optuna.samplers.TPESampler(seed=budget.seed + k, multivariate=True)
                trial = study.ask(distributions)
                params = dict(trial.params)
                devset = valset
                if minibatch:
                    devset = random.Random(budget.seed * 1009 + k).sample(valset, budget.minibatch_size)
                score = mean_score(with_params(student, state, params), devset, metric, task_lm, threads)
                study.tell(trial, score)
            if kinds[k] == "full" and score > state["best"]["score"]:
                state["best"] = {"score": score, "params": params}
            state["trials"].append({"params": params, "score": score, "kind": kinds[k]})
            ctx.progress(done=k + 1, total=len(kinds))
            yield {
                "trial": k,
                "score": score,
                "best": state["best"]["score"],
                "params": params,
                "choices": choices(names, params),
                "kind": kinds[k],
            }
            ctx.checkpoint(state)

    best = with_params(student, state, state["best"]["params"])
    return {
        "program": best,
        "score": state["best"]["score"],
        "baseline": state["baseline"],
        "trials": len(state["trials"]),
        "params": state["best"]["params"],
        "choices": choices(names, state["best"]["params"]),
    }


def sizes(state: dict[str, Any]) -> dict[str, int]:
    """Each search parameter and its number of choices."""
    out = {f"{i}_predictor_instruction": len(found) for i, found in state["instructions"].items()}
    if state["demos"]:
        out.update({f"{i}_predictor_demos": len(sets) for i, sets in state["demos"].items()})
    return out


def default_params(state: dict[str, Any]) -> dict[str, int]:
    """The unoptimized program: each predictor's first instruction (its own) and first demo set."""
    return dict.fromkeys(sizes(state), 0)


def best_unevaluated(trials: list[dict[str, Any]]) -> dict[str, int]:
    """The minibatch-scored choice with the highest mean that has not had a full evaluation yet."""
    full = {tuple(sorted(t["params"].items())) for t in trials if t["kind"] == "full"}
    means: dict[tuple[tuple[str, int], ...], list[float]] = {}
    for t in trials:
        key = tuple(sorted(t["params"].items()))
        if t["kind"] == "minibatch" and key not in full:
            means.setdefault(key, []).append(t["score"])
    if not means:  # every choice already has a full score: take the best of those again
        means = {tuple(sorted(t["params"].items())): [t["score"]] for t in trials}
    best = max(means, key=lambda key: sum(means[key]) / len(means[key]))
    return dict(best)
