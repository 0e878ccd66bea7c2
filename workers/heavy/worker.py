"""The heavy pool's worker: DSPy prompt optimization (``optimize``, a resumable job) and ``evaluate``.

Both call their models through :class:`orchestrator.dspy.PoolLM` (a pool model
such as ``light/tiny``: one Ray hop, structured outputs, batched by the light
pool) or an external OpenAI-compatible endpoint. Their arguments are checked
before any work (for a job: at submit), each refusal naming its field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from orchestrator import Context, Worker, op
from orchestrator.dspy import lm_for
from workers.heavy import programs
from workers.heavy.programs import Budget, Endpoint, Program
from workers.heavy.reflective import gepa
from workers.heavy.search import mipro, score_each

Events = Generator[dict[str, Any], None, dict[str, Any]]


def check_models(args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
    """Every pool model a job names is served now; an endpoint's key variable is set in this pool."""
    pools: list[str] | None = None
    for field in ("model", "prompt_model"):
        spec = args.get(field)
        if isinstance(spec, Endpoint) and spec.api_key_env and spec.api_key_env not in os.environ:
            raise programs.invalid(f"{field}.api_key_env", f"{spec.api_key_env} is not set in the heavy pool")
        if not isinstance(spec, str):
            continue
        pool, _, name = spec.partition("/")
        handle = orchestrator()
        pools = pools if pools is not None else handle.pools()
        if pool not in pools:
            raise programs.invalid(field, f"no pool {pool!r} (pools: {', '.join(pools)})")
        served = [m["id"] for m in handle.call(pool, "models")]
        if name and name not in served:
            raise programs.invalid(field, f"pool {pool!r} serves no model {name!r} (models: {', '.join(served)})")


def check_task(args: dict[str, Any], orchestrator: Callable[[], Any], sets: tuple[str, ...]) -> None:
    """The program parses, the rows have its fields, the metric exists, the models are served."""
    signature = programs.signature_of(args["program"])
    for field in sets:
        if args.get(field) is not None:
            programs.examples(args[field], signature, field)
    programs.metric(args["metric"], signature)
    check_models(args, orchestrator)


class Heavy(Worker):
    """DSPy optimization and evaluation. Options: ``model`` (the default task model, e.g. ``light/tiny``)."""

    def __init__(self, model: str = "light") -> None:
        self.model = model

    def _check_optimize(self, args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
        if len(args["trainset"]) < 2 and not args.get("valset"):
            raise programs.invalid("trainset", "needs at least 2 rows when no valset is given")
        programs.budget(args.get("optimizer"))
        check_task(args, orchestrator, ("trainset", "valset"))

    def _check_evaluate(self, args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
        check_task(args, orchestrator, ("devset",))

    @op(check=_check_optimize)
    def optimize(
        self,
        ctx: Context,
        program: Program,
        trainset: list[dict[str, Any]],
        valset: list[dict[str, Any]] | None = None,
        metric: str = "exact_match",
        optimizer: Budget | None = None,
        model: str | Endpoint | None = None,
        prompt_model: str | Endpoint | None = None,
    ) -> Events:
        """Optimize a DSPy program's instructions and demos (MIPROv2) or instructions (GEPA); run it as a job.

        Events: ``{"stage": ...}``, then one event per MIPROv2 trial (``{"trial", "score", "best", "params",
        "kind"}``) or GEPA iteration (``{"iteration", "accepted", "score", "best", "candidates",
        "metric_calls"}``), with progress. Result: ``{"program": <dspy state>, "score", "baseline", "trials"}``.
        """
        signature = programs.signature_of(program)
        task_lm = self._lm(ctx, model, "model")
        prompt_lm = self._lm(ctx, prompt_model or model, "prompt_model")
        settings = programs.budget(optimizer)
        search = gepa if settings.name == "gepa" else mipro
        return (
            yield from search(
                ctx,
                programs.build(program),
                programs.examples(trainset, signature, "trainset"),
                programs.examples(valset, signature, "valset") if valset else None,
                programs.metric(metric, signature),
                task_lm,
                prompt_lm,
                settings,
            )
        )

    @op(check=_check_evaluate)
    def evaluate(
        self,
        ctx: Context,
        program: Program,
        devset: list[dict[str, Any]],
        metric: str = "exact_match",
        model: str | Endpoint | None = None,
        num_threads: int = 8,
    ) -> Events:
        """Score a program on ``devset``: one ``{"example", "score", "prediction"}`` event per row, in order;
        returns ``{"score": mean, "results": [...]}``."""
        signature = programs.signature_of(program)
        examples = programs.examples(devset, signature, "devset")
        score = programs.metric(metric, signature)
        results: list[dict[str, Any]] = []
        lm = self._lm(ctx, model, "model")
        for scored in score_each(programs.build(program), examples, score, lm, max(1, min(num_threads, 64))):
            if ctx.cancelled:
                break
            event: dict[str, Any] = {"example": scored.index, "score": scored.score, "prediction": scored.prediction}
            if scored.error:
                event["error"] = scored.error
            ctx.progress(done=scored.index + 1, total=len(examples))
            results.append(event)
            yield event
        mean = sum(r["score"] for r in results) / len(results) if results else 0.0
        return {"score": mean, "results": results}

    def _lm(self, ctx: Context, spec: str | Endpoint | None, field: str) -> Any:
        chosen = spec or self.model
        raw = chosen if isinstance(chosen, str) else chosen.model_dump(exclude_none=True)
        return lm_for(raw, lambda: ctx.orchestrator, field)
