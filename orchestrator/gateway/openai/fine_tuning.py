"""OpenAI-compatible ``/v1/fine_tuning/jobs``: OpenAI's Fine-tuning API over the heavy pool's ``finetune`` job.

A fine-tuning job *is* an orchestrator job (op ``finetune`` on pool ``heavy``,
or the pool ``router(orch, pool=...)`` names), so it is queued, supervised,
resumed from its last checkpoint after its worker dies and cancelled like any
other, and ``/v1/jobs`` sees it too. Its id here is ``ftjob-<job id>``. The mapping:

- ``model``: a pool model (``llm/tiny``), a folder or a hub id. From a pool
  model the adapter is published to that pool: once the job succeeds,
  ``fine_tuned_model`` is ``<pool>/ft:<base>:<suffix or custom>:<8 hex>``, which
  the chat routes serve and ``/v1/models`` lists. The 8 hex characters are drawn
  when the job is created: the coordinator gives the job its id only after the
  name is already part of the job's arguments.
- ``hyperparameters`` (or ``method.supervised.hyperparameters``): ``n_epochs``,
  ``batch_size``, and ``learning_rate_multiplier`` (times 2e-4, the worker's
  default learning rate); ``"auto"`` keeps the worker's default and reads back
  as ``"auto"``. ``seed`` is drawn when not given, so the job always names it.
  Extensions: ``lora`` ({r, alpha, dropout, target_modules}), ``max_steps`` and
  ``save_steps`` (steps between checkpoints).
- ``status``: the job's own (``queued``, ``running``, ``succeeded``, ``failed``,
  ``cancelled``; a job waiting to re-run after its worker died reads ``queued``).
  ``validating_files`` is never seen: the files are checked when the job is
  created, and a bad one refuses it then (400 naming ``training_file``).
- Events, newest first: a message per status change, one ``metrics`` event per
  logging step (``data``: step, train_loss, total_steps, learning_rate, epoch,
  grad_norm; message ``Step 3/12: training loss=1.234``) and one message per
  checkpoint. The job's event log keeps no time the gateway can read, so step
  and checkpoint events carry the time the job started.
- Checkpoints: one per ``save_steps``, with the training loss at that step. They
  are where a re-run resumes, not served models (the trainer keeps only the last two).

Errors are OpenAI's body ``{"error": {"message", "type", "param", "code"}}``:
whatever the request got wrong is 400 with ``param`` naming the field as the
request spelled it (``training_file``, ``model``, ``hyperparameters.n_epochs``,
``suffix``, ``lora.r``); an unknown job, or a job that is not a fine-tuning job, 404.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.router import unwrap
from orchestrator.errors import InvalidArguments, JobNotFound, OrchestratorError
from orchestrator.gateway.guard import error_response, openai_error

JOBS = "/v1/fine_tuning/jobs"
POOL = "heavy"  # the pool whose worker has the `finetune` op (workers.heavy:Heavy)
FINETUNE_OP = "finetune"
JOB_PREFIX = "ftjob-"
BASE_LEARNING_RATE = 2e-4  # the worker's default learning rate: learning_rate_multiplier 1
ORGANIZATION = "orchestrator"
DEFAULT_SUFFIX = "custom"
SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # no ':' (it separates the name's parts), no '/'
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
STATUSES = {"retrying": "queued"}  # the rest are OpenAI's words already
SEED_MAX = 2**31 - 1
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; ``"auto"`` keeps the worker's default."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Auto = Field("auto", description="Passes over the training data (unless max_steps is set).")
    batch_size: int | Auto = Field("auto", description="Rows per training step.")
    learning_rate_multiplier: float | Auto = Field("auto", description="Times 2e-4, the default learning rate.")


class Supervised(BaseModel):
    """``method.supervised``."""

    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = Field(None, description="As the top-level hyperparameters.")


class Method(BaseModel):
    """``method``: only ``supervised`` fine-tuning runs here."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"] = Field(description="supervised (the others are refused).")
    supervised: Supervised | None = Field(None, description="Its hyperparameters.")
    dpo: dict[str, Any] | None = Field(None, description="Refused: no DPO here.")
    reinforcement: dict[str, Any] | None = Field(None, description="Refused: no reinforcement fine-tuning here.")


class JobCreate(BaseModel):
    """Body of POST /v1/fine_tuning/jobs: OpenAI's fields, plus ``lora``, ``max_steps`` and ``save_steps``."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="The base model: a pool model (llm/tiny), a folder or a hub id.")
    training_file: str = Field(description="An uploaded file's id (purpose fine-tune): chat or prompt/completion rows.")
    validation_file: str | None = Field(None, description="An uploaded file's id, evaluated once per epoch.")
    hyperparameters: Hyperparameters | None = Field(None, description="n_epochs, batch_size, learning_rate_multiplier.")
    method: Method | None = Field(None, description='{"type": "supervised", "supervised": {"hyperparameters": ...}}.')
    suffix: str | None = Field(None, description="Up to 64 of letters, digits, _ . - in the fine-tuned model's name.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Makes the run reproducible (drawn if not given).")
    lora: dict[str, Any] | None = Field(None, description="Extension: {r, alpha, dropout, target_modules}.")
    max_steps: int | None = Field(None, description="Extension: stop after this many steps (overrides n_epochs).")
    save_steps: int | None = Field(None, description="Extension: steps between checkpoints.")

    def chosen(self) -> tuple[Hyperparameters, str]:
        """The hyperparameters and where the request put them (errors name the field as it was sent)."""
        under_method = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        if self.method is not None and self.method.type != "supervised":
            raise _invalid("method.type", f"{self.method.type!r} fine-tuning is not available here; use 'supervised'")
        if under_method is not None and self.hyperparameters is not None:
            raise _invalid("hyperparameters", "give hyperparameters or method.supervised.hyperparameters, not both")
        if under_method is not None:
            return under_method, "method.supervised.hyperparameters"
        return self.hyperparameters or Hyperparameters(), "hyperparameters"

    def finetune_args(self, name: str, hyper: Hyperparameters) -> dict[str, Any]:
        """The ``finetune`` op's arguments (what the job record keeps, and what the job object is read from)."""
        settings: dict[str, Any] = {"seed": random.randint(0, SEED_MAX) if self.seed is None else self.seed}
        if hyper.n_epochs != "auto":
            settings["n_epochs"] = hyper.n_epochs
        if hyper.batch_size != "auto":
            settings["batch_size"] = hyper.batch_size
        if hyper.learning_rate_multiplier != "auto":
            settings["learning_rate"] = BASE_LEARNING_RATE * hyper.learning_rate_multiplier
        for key in ("max_steps", "save_steps"):
            if getattr(self, key) is not None:
                settings[key] = getattr(self, key)
        args: dict[str, Any] = {
            "model": self.model,
            "training_file": self.training_file,
            "hyperparameters": settings,
            "name": name,
        }
        if self.validation_file is not None:
            args["validation_file"] = self.validation_file
        if self.lora is not None:
            args["lora"] = self.lora
        return args


def adapter_name(model: str, suffix: str | None, pools: Iterable[str]) -> str:
    """``ft:<base model>:<suffix or custom>:<8 hex>``: a valid adapter name (no slash), unique per job."""
    pool, _, rest = model.partition("/")
    base = rest if pool in set(pools) and rest else model.rstrip("/").rsplit("/", 1)[-1]
    base = NOT_IN_NAME.sub("-", base).strip("-.")[:40] or "model"
    return f"ft:{base}:{suffix or DEFAULT_SUFFIX}:{uuid.uuid4().hex[:8]}"


def job_object(record: dict[str, Any]) -> dict[str, Any]:
    """A finetune job's record as OpenAI's ``fine_tuning.job``."""
    args = record.get("args") or {}
    settings = args.get("hyperparameters") or {}
    hyper: dict[str, Any] = {
        "n_epochs": settings.get("n_epochs", "auto"),
        "batch_size": settings.get("batch_size", "auto"),
        "learning_rate_multiplier": (
            round(settings["learning_rate"] / BASE_LEARNING_RATE, 9) if "learning_rate" in settings else "auto"
        ),
    }
    status = STATUSES.get(record["status"], record["status"])
    result = record.get("result") if status == "succeeded" else None
    metrics = (result or {}).get("metrics") or {}
    parts = str(args.get("name") or "").split(":")
    suffix = parts[2] if len(parts) == 4 and parts[0] == "ft" and parts[2] != DEFAULT_SUFFIX else None
    return {
        "id": JOB_PREFIX + record["id"],
        "object": "fine_tuning.job",
        "model": args.get("model"),
        "created_at": int(record["created"]),
        "finished_at": int(record["finished"]) if record.get("finished") else None,
        "fine_tuned_model": (result or {}).get("model"),
        "organization_id": ORGANIZATION,
        "result_files": [],
        "status": status,
        "validation_file": args.get("validation_file"),
        "training_file": args.get("training_file"),
        "hyperparameters": hyper,
        "trained_tokens": int(metrics["num_tokens"]) if "num_tokens" in metrics else None,
        "error": _error(record) if status == "failed" else None,
        "seed": settings.get("seed"),
        "estimated_finish": _estimated_finish(record) if status == "running" else None,
        "integrations": [],
        "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "user_provided_suffix": suffix,
    }


def job_events(record: dict[str, Any], log: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """The job's ``fine_tuning.job.event`` objects, oldest first: status changes, steps, checkpoints."""
    job_id, created = record["id"], record["created"]
    started = record.get("started") or created
    finished = record.get("finished") or started

    def event(key: str, at: float, message: str, level: str = "info", data: Any = None) -> dict[str, Any]:
        return {
            "id": f"ftevent-{job_id}-{key}",
            "object": "fine_tuning.job.event",
            "created_at": int(at),
            "level": level,
            "message": message,
            "data": data,
            "type": "metrics" if data is not None else "message",
        }

    out = [event("created", created, f"Created fine-tuning job: {JOB_PREFIX}{job_id}")]
    if record.get("started"):
        out.append(event("started", started, "Fine-tuning job started"))
    total = _total_steps(log)
    for seq, item in log:
        if not isinstance(item, dict):
            continue
        if "step" in item and "loss" in item:
            data = {"step": item["step"], "train_loss": item["loss"], "total_steps": total}
            data.update({k: item[k] for k in ("learning_rate", "epoch", "grad_norm") if k in item})
            message = f"Step {item['step']}{f'/{total}' if total else ''}: training loss={item['loss']:.3f}"
            out.append(event(str(seq), started, message, data=data))
        elif isinstance(item.get("checkpoint"), dict):
            out.append(event(str(seq), started, f"Checkpoint created at step {item['checkpoint'].get('step')}"))
    status = record["status"]
    if status == "succeeded":
        model = (record.get("result") or {}).get("model")
        if model:
            out.append(event("model", finished, f"New fine-tuned model created: {model}"))
        out.append(event("end", finished, "The job has successfully completed"))
    elif status == "failed":
        out.append(event("end", finished, f"Fine-tuning job failed: {_error(record)['message']}", level="error"))
    elif status == "cancelled":
        out.append(event("end", finished, "Fine-tuning job cancelled"))
    return out


def job_checkpoints(record: dict[str, Any], log: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """The job's ``fine_tuning.job.checkpoint`` objects, oldest first, each with the loss logged at its step."""
    job_id = record["id"]
    name = (record.get("args") or {}).get("name") or JOB_PREFIX + job_id
    at = int(record.get("started") or record["created"])
    losses = {item["step"]: item["loss"] for _, item in log if isinstance(item, dict) and "loss" in item}
    steps: dict[int, dict[str, Any]] = {}
    for _, item in log:
        saved = item.get("checkpoint") if isinstance(item, dict) else None
        if isinstance(saved, dict) and isinstance(saved.get("step"), int):
            step = saved["step"]
            steps[step] = {
                "id": f"ftckpt-{job_id}-{step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": at,
                "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}",
                "fine_tuning_job_id": JOB_PREFIX + job_id,
                "metrics": {"step": float(step), "train_loss": losses.get(step)},
                "step_number": step,
            }
    return [steps[step] for step in sorted(steps)]


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: up to ``limit`` items following the one whose id is ``after``."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise _invalid("after", f"{after!r} is not an id in this list")
        start = ids.index(after) + 1
    data = items[start : start + limit]
    return {"object": "list", "data": data, "has_more": start + limit < len(items)}


def router(orch: Orchestrator, pool: str = POOL) -> APIRouter:
    """The fine-tuning routes; jobs are submitted to ``pool`` (whose worker has the ``finetune`` op)."""
    api = APIRouter(tags=["openai"])

    async def record_of(ftjob_id: str) -> dict[str, Any]:
        """The job behind ``ftjob-<id>`` (404 unless it is a ``finetune`` job of ``pool``)."""
        job_id = ftjob_id.removeprefix(JOB_PREFIX)
        missing = JobNotFound(f"no fine-tuning job {ftjob_id!r}")
        if job_id == ftjob_id:
            raise missing
        try:
            record: dict[str, Any] = unwrap(await orch.coordinator.get_job.remote(job_id))
        except JobNotFound:
            raise missing from None
        if record.get("op") != FINETUNE_OP or record.get("pool") != pool:
            raise missing
        return record

    async def log_of(record: dict[str, Any]) -> list[tuple[int, Any]]:
        """Every event the job logged (the coordinator hands them out in batches)."""
        log: list[tuple[int, Any]] = []
        while not log or log[-1][0] < record.get("events", 0):
            after = log[-1][0] if log else 0
            batch = unwrap(await orch.coordinator.job_events.remote(record["id"], after, 0.0))
            if not batch["events"]:
                break
            log.extend(batch["events"])
        return log

    @api.post(JOBS)
    async def create_job(request: Request) -> Response:
        """Create a fine-tuning job (the files and arguments are checked now); its job object."""
        where = "hyperparameters"
        try:
            body = await _parse(request)
            hyper, where = body.chosen()
            if body.suffix is not None and not SUFFIX.fullmatch(body.suffix):
                raise _invalid("suffix", "1 to 64 of letters, digits, _ . - (starting with a letter or digit)")
            name = adapter_name(body.model, body.suffix, orch.router.table["pools"])
            args = body.finetune_args(name, hyper)
            submitted = unwrap(await orch.coordinator.submit_job.remote(pool, FINETUNE_OP, args, None, None))
            return _json(job_object(submitted))
        except OrchestratorError as exc:
            return _failed(exc, where)

    @api.get(JOBS)
    async def list_jobs(
        after: str | None = Query(None, description="The last job id of the previous page."),
        limit: int = Query(20, ge=1, le=100, description="Jobs per page."),
    ) -> Response:
        """Fine-tuning jobs, newest first: a keyset page of the store (its cost follows the page, not the history)."""
        try:
            job_id = after.removeprefix(JOB_PREFIX) if after is not None else None
            records = unwrap(await orch.coordinator.list_jobs.remote(pool, None, limit + 1, job_id, FINETUNE_OP))
            jobs = [job_object(r) for r in records]
            return _json({"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit})
        except OrchestratorError as exc:
            return _failed(exc)

    @api.get(JOBS + "/{ftjob_id}")
    async def retrieve_job(ftjob_id: str) -> Response:
        """One fine-tuning job."""
        try:
            return _json(job_object(await record_of(ftjob_id)))
        except OrchestratorError as exc:
            return _failed(exc)

    @api.get(JOBS + "/{ftjob_id}/events")
    async def list_events(
        ftjob_id: str,
        after: str | None = Query(None, description="The last event id of the previous page."),
        limit: int = Query(20, ge=1, le=1000, description="Events per page."),
    ) -> Response:
        """The job's events, newest first."""
        try:
            record = await record_of(ftjob_id)
            events = job_events(record, await log_of(record))
            return _json(page(events[::-1], after, limit))
        except OrchestratorError as exc:
            return _failed(exc)

    @api.get(JOBS + "/{ftjob_id}/checkpoints")
    async def list_checkpoints(
        ftjob_id: str,
        after: str | None = Query(None, description="The last checkpoint id of the previous page."),
        limit: int = Query(10, ge=1, le=100, description="Checkpoints per page."),
    ) -> Response:
        """The job's checkpoints, newest first."""
        try:
            record = await record_of(ftjob_id)
            checkpoints = job_checkpoints(record, await log_of(record))[::-1]
            listed = page(checkpoints, after, limit)
            ids = [c["id"] for c in listed["data"]]
            return _json({**listed, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None})
        except OrchestratorError as exc:
            return _failed(exc)

    @api.post(JOBS + "/{ftjob_id}/cancel")
    async def cancel_job(ftjob_id: str) -> Response:
        """Cancel: a queued job at once, a running one at its next step (it reads ``running`` until then)."""
        try:
            record = await record_of(ftjob_id)
            unwrap(await orch.coordinator.cancel_job.remote(record["id"]))
            return _json(job_object(await record_of(ftjob_id)))
        except OrchestratorError as exc:
            return _failed(exc)

    return api


async def _parse(request: Request) -> JobCreate:
    """The body, or InvalidArguments naming the fields as sent (pydantic's union branch tags left out)."""
    try:
        data = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid("body", f"not valid JSON: {exc}") from None
    try:
        return JobCreate.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for error in exc.errors():
            loc = [str(p) for p in error["loc"] if not (isinstance(p, str) and (p in ("int", "float") or "[" in p))]
            message = "unexpected field" if error["type"] == "extra_forbidden" else str(error["msg"])
            problems.setdefault(".".join(loc) or "body", []).append(message)
        detail = [{"field": field, "message": " or ".join(messages)} for field, messages in problems.items()]
        text = "; ".join(f"{d['field']}: {d['message']}" for d in detail)
        raise InvalidArguments(text, detail=detail) from None


def _param(field: str, where: str) -> str:
    """The worker's argument name as the request spelled it: ``name`` -> ``suffix``,
    ``hyperparameters.learning_rate`` -> ``<where>.learning_rate_multiplier``,
    ``hyperparameters.max_steps`` -> ``max_steps``."""
    if field == "name":
        return "suffix"
    head, _, rest = field.partition(".")
    if head != "hyperparameters" or where == field:
        return field
    key, dot, tail = rest.partition(".")
    if key in ("max_steps", "save_steps", "seed"):
        return rest
    if key == "learning_rate":
        key = "learning_rate_multiplier"
    return f"{where}.{key}{dot}{tail}" if key else where


def _failed(exc: OrchestratorError, where: str = "hyperparameters") -> JSONResponse:
    """An error in OpenAI's body: what the request got wrong is 400 naming the field as it was sent."""
    if not isinstance(exc, InvalidArguments):
        return error_response(exc, JOBS)
    problems = [p for p in exc.detail if isinstance(p, dict)] if isinstance(exc.detail, list) else []
    named = [(_param(str(p.get("field", "")), where), p.get("message")) for p in problems if p.get("field")]
    if not named:
        return openai_error(400, exc.message, None, exc.code)
    message = "; ".join(f"{field}: {text}" for field, text in named) if all(t for _, t in named) else exc.message
    return openai_error(400, message, named[0][0], exc.code)


def _invalid(field: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


def _error(record: dict[str, Any]) -> dict[str, Any]:
    """A failed job's error as OpenAI's ``{code, message, param}``."""
    error = record.get("error") or {}
    detail = error.get("detail")
    first = detail[0] if isinstance(detail, list) and detail and isinstance(detail[0], dict) else {}
    return {
        "code": str(error.get("code") or "op_failed"),
        "message": str(error.get("message") or "the job failed"),
        "param": first.get("field"),
    }


def _total_steps(log: list[tuple[int, Any]]) -> int | None:
    for _, item in reversed(log):
        progress = item.get("progress") if isinstance(item, dict) else None
        if isinstance(progress, dict) and isinstance(progress.get("total"), int):
            return int(progress["total"])
    return None


def _estimated_finish(record: dict[str, Any]) -> int | None:
    """From the steps done so far, at the pace since the job started."""
    progress, started = record.get("progress") or {}, record.get("started")
    done, total = progress.get("done"), progress.get("total")
    if not started or not isinstance(done, int) or not isinstance(total, int) or done <= 0:
        return None
    now = time.time()
    return int(max(now, started + (now - started) * total / done))  # all steps done: saving, any moment now


def _json(obj: Any) -> JSONResponse:
    """A JSON answer; values JSON cannot hold (from jobs submitted elsewhere) become their repr."""
    return JSONResponse(json.loads(json.dumps(obj, default=repr)))
