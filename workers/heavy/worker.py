"""The heavy pool's worker: DSPy prompt optimization (``optimize``, a resumable job), ``evaluate``, and LoRA
fine-tuning (``finetune``, a resumable job whose adapter the light pool then serves).

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
from orchestrator.contract.paths import ADAPTER_NAME, FINE_TUNED, deployed_packages
from orchestrator.dspy import lm_for
from orchestrator.errors import OrchestratorError
from workers.heavy import finetune as tuning
from workers.heavy import metrics, programs
from workers.heavy.distill import bootstrap_finetune
from workers.heavy.finetune import Hyper, LoRA
from workers.heavy.programs import Budget, Endpoint, Program
from workers.heavy.reflective import gepa
from workers.heavy.search import mipro, score_each

Events = Generator[dict[str, Any], None, dict[str, Any]]


def check_models(specs: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
    """Every pool model a job names (by field) is served now; an endpoint's key variable is set in this pool."""
    pools: list[str] | None = None
    for field, spec in specs.items():
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


def check_task(
    args: dict[str, Any], orchestrator: Callable[[], Any], sets: tuple[str, ...], allowed: frozenset[str]
) -> None:
    """The program loads, the rows have its inputs (and labels), the metric exists, the models are served."""
    loaded = programs.load(args["program"], allowed)
    for field in sets:
        if args.get(field) is not None:
            programs.examples(args[field], loaded, field, labelled=metrics.is_builtin(args["metric"]))
    metrics.metric(args["metric"], _outputs(loaded))
    optimizer = args.get("optimizer")
    named = {
        "model": args.get("model"),
        "prompt_model": args.get("prompt_model"),
        "program.model": loaded.program.model,
        "optimizer.teacher": optimizer.teacher if optimizer is not None else None,
    }
    check_models(named, orchestrator)


def _outputs(loaded: programs.Loaded) -> list[str] | None:
    return list(loaded.outputs) if loaded.outputs is not None else None


class Heavy(Worker):
    """DSPy optimization and evaluation. Options: ``model`` (the default task model, e.g. ``light/tiny``) and
    ``programs`` (top-level packages installed in this pool's env whose ``dspy.Module`` classes jobs may
    name, besides pools.yaml's ``code:``)."""

    def __init__(self, model: str = "light", programs: list[str] | None = None) -> None:
        self.model = model
        self.allowed = deployed_packages() | frozenset(programs or ())

    def _check_optimize(self, args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
        if len(args["trainset"]) < 2 and not args.get("valset"):
            raise programs.invalid("trainset", "needs at least 2 rows when no valset is given")
        settings = programs.budget(args.get("optimizer"))
        check_task(args, orchestrator, ("trainset", "valset"), self.allowed)
        if settings.name == "bootstrap_finetune":
            program = args["program"]
            chosen = args.get("model") or program.model or self.model
            if not isinstance(chosen, str):
                raise programs.invalid("model", "bootstrap_finetune tunes a pool's model (pool/model), not an endpoint")
            handle = orchestrator()
            _, serving = tuning.base_source(chosen, handle.pools(), lambda pool: handle.call(pool, "models"))
            if serving is None:
                raise programs.invalid("model", f"{chosen!r}: bootstrap_finetune fine-tunes a model a pool serves")

    def _check_evaluate(self, args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
        check_task(args, orchestrator, ("devset",), self.allowed)

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
        """Optimize a DSPy program's instructions and demos (MIPROv2) or instructions (GEPA), every predictor's;
        run it as a job.

        Events: ``{"stage": ...}``, then one event per MIPROv2 trial (``{"trial", "score", "best", "params",
        "choices", "kind"}``, ``choices`` by predictor name) or GEPA iteration (``{"iteration", "accepted",
        "score", "best", "candidates", "metric_calls", "updated"}``), with progress. Result: ``{"program",
        "score", "baseline", "trials"}``, ``program`` being a signature program's dspy state or a class
        program's ``{"class", "init", "state", "digest"}``.
        """
        loaded = programs.load(program, self.allowed)
        model = model or loaded.program.model
        settings = programs.budget(optimizer)
        labelled = metrics.is_builtin(metric)
        if settings.name == "bootstrap_finetune":
            rows = programs.examples(trainset, loaded, "trainset", labelled)
            score = metrics.metric(metric, _outputs(loaded))
            result = yield from self._distill(ctx, loaded, rows, score, model, settings)
            return {**result, "program": loaded.result(result["program"], result["model"])}
        task_lm = self._lm(ctx, model, "model")
        prompt_lm = self._lm(ctx, prompt_model or model, "prompt_model")
        search = gepa if settings.name == "gepa" else mipro
        result = yield from search(
            ctx,
            loaded.build(),
            programs.examples(trainset, loaded, "trainset", labelled),
            programs.examples(valset, loaded, "valset", labelled) if valset else None,
            metrics.metric(metric, _outputs(loaded)),
            task_lm,
            prompt_lm,
            settings,
        )
        return {**result, "program": loaded.result(result["program"])}

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
        returns ``{"score": mean, "results": [...], "model": the task model it ran on}``."""
        loaded = programs.load(program, self.allowed)
        examples = programs.examples(devset, loaded, "devset", metrics.is_builtin(metric))
        score = metrics.metric(metric, _outputs(loaded))
        results: list[dict[str, Any]] = []
        lm = self._lm(ctx, model or loaded.program.model, "model")
        for scored in score_each(loaded.build(), examples, score, lm, max(1, min(num_threads, 64))):
            if ctx.cancelled:
                break
            event: dict[str, Any] = {"example": scored.index, "score": scored.score, "prediction": scored.prediction}
            if scored.error:
                event["error"] = scored.error
            ctx.progress(done=scored.index + 1, total=len(examples))
            results.append(event)
            yield event
        mean = sum(r["score"] for r in results) / len(results) if results else 0.0
        return {"score": mean, "results": results, "model": lm.model}

    def _check_finetune(self, args: dict[str, Any], orchestrator: Callable[[], Any]) -> None:
        handle = orchestrator()
        pools = handle.pools()
        source, _ = tuning.base_source(args["model"], pools, lambda pool: handle.call(pool, "models"))
        for field in ("training", "validation"):
            _data(args, field, handle)
        publish = args.get("publish")
        if publish is not None:
            if publish not in pools:
                raise programs.invalid("publish", f"no pool {publish!r} (pools: {', '.join(pools)})")
            try:
                bases = [m.get("source") for m in handle.call(publish, "models") if m.get("kind") == "base"]
            except OrchestratorError as exc:
                raise programs.invalid("publish", f"pool {publish!r} serves no models: {exc.message}") from None
            if source not in bases:  # an adapter only fits the base model it was trained on
                raise programs.invalid("publish", f"pool {publish!r} does not serve the base model {source}")
        name = args.get("name")
        if name is not None and not ADAPTER_NAME.fullmatch(name):
            raise programs.invalid("name", f"{name!r}: a letter or digit, then up to 127 of letters, digits, _ . : -")

    @op(check=_check_finetune)
    def finetune(
        self,
        ctx: Context,
        model: str,
        training_data: list[dict[str, Any]] | None = None,
        training_file: str | None = None,
        validation_data: list[dict[str, Any]] | None = None,
        validation_file: str | None = None,
        lora: LoRA | None = None,
        hyperparameters: Hyper | None = None,
        name: str | None = None,
        publish: str | None = None,
    ) -> Events:
        """Fine-tune a LoRA adapter on chat or prompt/completion rows (inline or an uploaded file); run it as a job.

        ``model``: a pool model (``light/tiny``: the adapter is then published to that pool, unless
        ``publish`` names another), a local folder or a hub id. Events: one ``{"step", "loss",
        "learning_rate", "epoch"}`` per logging step, with progress. Result: ``{"adapter": folder,
        "model": "<pool>/<name>" (served) or None, "steps", "metrics"}``.
        """
        handle = ctx.orchestrator
        pools = handle.pools()
        source, serving = tuning.base_source(model, pools, lambda pool: handle.call(pool, "models"))
        rows = _data({"training_data": training_data, "training_file": training_file}, "training", handle) or []
        held = {"validation_data": validation_data, "validation_file": validation_file}
        validation = _data(held, "validation", handle)
        adapter = name or f"ft-{(ctx.job_id or 'run')[:12]}"
        settings = hyperparameters or Hyper()
        result = yield from tuning.train(ctx, source, rows, validation, lora or LoRA(), settings, adapter)
        target = publish or serving
        result["model"] = None
        if target is not None and not ctx.cancelled:
            result["model"] = _publish(handle, target, adapter)
        return result

    def _distill(
        self, ctx: Context, loaded: programs.Loaded, trainset: list[Any], metric: Any, model: Any, settings: Budget
    ) -> Events:
        """BootstrapFinetune (see :mod:`workers.heavy.distill`): the task model ``model`` (a pool's) learns the
        program's successful traces, collected with ``settings.teacher`` (default: the task model)."""
        chosen = str(model or self.model)
        handle = ctx.orchestrator
        source, serving = tuning.base_source(chosen, handle.pools(), lambda pool: handle.call(pool, "models"))
        assert serving is not None  # checked at submit
        lora, hyper = programs.training(settings)
        teacher = self._lm(ctx, settings.teacher or chosen, "optimizer.teacher")
        name = f"bft-{(ctx.job_id or 'run')[:12]}"
        return (
            yield from bootstrap_finetune(
                ctx,
                loaded.build(),
                trainset,
                metric,
                teacher,
                settings.num_threads,
                (source, lora, hyper, name),
                lambda adapter: _publish(handle, serving, adapter),
            )
        )

    def _lm(self, ctx: Context, spec: str | Endpoint | None, field: str) -> Any:
        chosen = spec or self.model
        raw = chosen if isinstance(chosen, str) else chosen.model_dump(exclude_none=True)
        return lm_for(raw, lambda: ctx.orchestrator, field)


def _publish(handle: Any, pool: str, adapter: str) -> str:
    """Every actor of ``pool`` serves the adapter (and later ones too): the model ``<pool>/<adapter>``."""
    handle.call(pool, "load_adapter", name=adapter, path=f"{FINE_TUNED}{adapter}")
    return f"{pool}/{adapter}"


def _data(args: dict[str, Any], which: str, handle: Any) -> list[dict[str, Any]] | None:
    """The ``training``/``validation`` rows: inline (``<which>_data``) or an uploaded file (``<which>_file``)."""
    inline, file_id = args.get(f"{which}_data"), args.get(f"{which}_file")
    if inline is not None and file_id is not None:
        raise programs.invalid(f"{which}_file", f"give {which}_data or {which}_file, not both")
    if file_id is not None:
        try:
            record = handle.file(file_id)
        except OrchestratorError as exc:
            raise programs.invalid(f"{which}_file", exc.message) from None
        if record.get("purpose") != "fine-tune":
            raise programs.invalid(f"{which}_file", f"{file_id} has purpose {record.get('purpose')!r}, not 'fine-tune'")
        inline = tuning.jsonl_rows(handle.file_content(file_id), f"{which}_file")
    if inline is None:
        if which == "training":
            raise programs.invalid("training_data", "give training_data (rows) or training_file (a file id)")
        return None
    tuning.rows_format(inline, f"{which}_file" if file_id else f"{which}_data")
    return inline
