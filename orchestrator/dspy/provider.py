"""``Provider``: DSPy's fine-tuning provider for the gateway's Fine-tuning API, so ``lm.finetune`` trains a
LoRA adapter on the heavy pool and hands back an LM that answers through it at once.

    import dspy
    from orchestrator.dspy import Provider
    lm = dspy.LM("openai/light/tiny", api_base="http://localhost:8000/v1", api_key="...", provider=Provider())
    tuned = lm.finetune(train_data=rows, train_data_format="chat", train_kwargs={"n_epochs": 3}).result()
    tuned("Say apple.")                          # tuned.model == "openai/light/ft:tiny:custom:1a2b3c4d"

It talks to the LM's own ``api_base`` and ``api_key`` (else ``OPENAI_BASE_URL``
and ``OPENAI_API_KEY``, as LiteLLM would): the rows go up to ``/v1/files``, the
job to ``/v1/fine_tuning/jobs``, and the job is polled every ``poll_interval_s``
(its events go to this module's logger). Unlike DSPy's ``OpenAIProvider``, the
model it returns keeps the ``openai/`` prefix: LiteLLM infers the provider only
for ``ft:gpt-...`` names, so a bare ``light/ft:...`` would fail on first call.

``train_kwargs``: ``n_epochs``, ``batch_size`` and ``learning_rate_multiplier`` are
sent as ``hyperparameters``; anything else as the job's own fields (``suffix``,
``seed``, ``validation_file``, and the gateway's ``lora``, ``max_steps``, ``save_steps``).

Errors are the orchestrator's (``InvalidArguments`` for rows or settings the
gateway refuses, naming them; ``OpFailed`` for a job that failed, naming the job
and the gateway's message; ``JobCancelled``). As with any DSPy provider, the
training job's ``result()`` is the error itself, not raised.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import time
from concurrent.futures import InvalidStateError
from typing import Any

import httpx

from orchestrator.client.core import decode_error
from orchestrator.errors import InvalidArguments, JobCancelled, OrchestratorError

_provider: Any = importlib.import_module("dspy.clients.provider")
_finetune: Any = importlib.import_module("dspy.clients.utils_finetune")
TrainDataFormat: Any = _finetune.TrainDataFormat
TrainingStatus: Any = _finetune.TrainingStatus

logger = logging.getLogger(__name__)

PREFIX = "openai/"  # LiteLLM's provider for an OpenAI-compatible api_base
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
FORMATS = (TrainDataFormat.CHAT, TrainDataFormat.COMPLETION, None)  # the gateway tells the two apart by row
STATUSES = {
    "validating_files": TrainingStatus.pending,
    "queued": TrainingStatus.pending,
    "running": TrainingStatus.running,
    "succeeded": TrainingStatus.succeeded,
    "failed": TrainingStatus.failed,
    "cancelled": TrainingStatus.cancelled,
}
DONE = ("succeeded", "failed", "cancelled")


class Gateway:
    """The Fine-tuning API at ``api_base`` (``http://host:port/v1``): JSON bodies, errors as the orchestrator's."""

    def __init__(self, api_base: str, api_key: str | None, timeout_s: float) -> None:
        self.api_base = api_base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, doing: str, **options: Any) -> dict[str, Any]:
        """One call; a refusal or an unreachable gateway raises an OrchestratorError saying what was being done."""
        url = f"{self.api_base}/{path}"
        try:
            response = httpx.request(method, url, headers=self.headers, timeout=self.timeout_s, **options)
        except httpx.HTTPError as exc:
            raise OrchestratorError(f"{doing}: the gateway at {self.api_base} is unreachable ({exc})") from None
        if not response.is_success:
            error = decode_error(response.status_code, response.content)
            raise type(error)(
                f"{doing}: {error.message}",
                pool=error.pool,
                op=error.op,
                retryable=error.retryable,
                detail=error.detail,
            )
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise OrchestratorError(f"{doing}: {url} answered non-JSON: {response.text[:200]}") from None
        return body


class TrainingJob(_provider.TrainingJob):
    """DSPy's training future, with the gateway job's status and cancellation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway: Gateway | None = None
        self.provider_file_id: str | None = None
        self.provider_job_id: str | None = None

    def status(self) -> Any:
        """The job's ``dspy.clients.utils_finetune.TrainingStatus`` (``not_started`` until it is created)."""
        if self.gateway is None or self.provider_job_id is None:
            return TrainingStatus.not_started
        job = self.gateway.request("GET", f"fine_tuning/jobs/{self.provider_job_id}", "reading the job")
        return STATUSES[job["status"]]

    def cancel(self) -> bool:
        """Cancel the gateway's job (queued at once, running at its next step), then this future."""
        if self.gateway is not None and self.provider_job_id is not None:
            job_id = self.provider_job_id
            job = self.gateway.request("GET", f"fine_tuning/jobs/{job_id}", f"cancelling fine-tuning job {job_id}")
            if job["status"] not in DONE:
                self.gateway.request(
                    "POST", f"fine_tuning/jobs/{job_id}/cancel", f"cancelling fine-tuning job {job_id}"
                )
        super().cancel()  # DSPy's returns None: whether the future was cancelled is its state
        return bool(self.cancelled())

    def set_result(self, result: Any) -> None:
        # DSPy's training thread sets its result (or error) even after the future was cancelled.
        with contextlib.suppress(InvalidStateError):
            super().set_result(result)


class Provider(_provider.Provider):
    """Fine-tunes a ``dspy.LM`` served by the gateway (``openai/<pool>/<model>``) through its Fine-tuning API.

    ``api_base``/``api_key`` override the LM's own; ``poll_interval_s`` is the time between
    status reads; ``timeout_s`` bounds each HTTP call.
    """

    def __init__(
        self,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        poll_interval_s: float = 1.0,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.finetunable = True
        self.TrainingJob = TrainingJob
        self.api_base, self.api_key = api_base, api_key
        self.poll_interval_s, self.timeout_s = poll_interval_s, timeout_s

    def finetune(
        self,
        job: TrainingJob,
        model: str,
        train_data: list[dict[str, Any]],
        train_data_format: Any,
        train_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Upload ``train_data``, run the job and wait for it; the fine-tuned model, ``openai/<pool>/ft:...``."""
        if train_data_format not in FORMATS:
            formats = ", ".join(str(f.value) for f in FORMATS if f is not None)
            raise InvalidArguments(f"train_data_format: {train_data_format!r} is not one of {formats}")
        base = model.removeprefix(PREFIX)
        gateway = job.gateway = self._gateway(job)
        rows = "".join(json.dumps(row) + "\n" for row in train_data).encode()
        upload = {"file": ("dspy-train.jsonl", rows, "application/jsonl")}
        uploaded = gateway.request(
            "POST", "files", f"uploading the training data for {base}", files=upload, data={"purpose": "fine-tune"}
        )
        job.provider_file_id = uploaded["id"]
        created = gateway.request(
            "POST",
            "fine_tuning/jobs",
            f"creating a fine-tuning job for {base}",
            json=_body(base, uploaded["id"], train_kwargs),
        )
        job_id = job.provider_job_id = created["id"]
        logger.info("fine-tuning job %s: %s on %s", job_id, base, uploaded["id"])
        finished = self._wait(job, gateway, job_id)
        if finished["status"] == "failed":
            error = finished.get("error") or {}
            param = error.get("param")
            raise OrchestratorError.from_dict(
                {
                    "code": error.get("code") or "op_failed",
                    "message": f"fine-tuning job {job_id} failed: {error.get('message') or 'no reason given'}",
                    "detail": [{"field": param}] if param else None,
                }
            )
        if finished["status"] == "cancelled" or job.cancelled():
            raise JobCancelled(f"fine-tuning job {job_id} was cancelled")
        tuned = finished.get("fine_tuned_model")
        if not tuned:
            raise OrchestratorError(f"fine-tuning job {job_id} succeeded, but no pool serves its adapter ({base})")
        return f"{PREFIX}{tuned}"

    def _wait(self, job: TrainingJob, gateway: Gateway, job_id: str) -> dict[str, Any]:
        """Poll the job until it is over (or this future is cancelled), logging its new events."""
        seen: set[str] = set()
        while True:
            record = gateway.request("GET", f"fine_tuning/jobs/{job_id}", f"reading fine-tuning job {job_id}")
            events = gateway.request(
                "GET", f"fine_tuning/jobs/{job_id}/events", f"reading fine-tuning job {job_id}", params={"limit": 100}
            )
            for event in reversed(events.get("data") or []):  # newest first: log them oldest first
                if event["id"] not in seen:
                    seen.add(event["id"])
                    logger.info("fine-tuning job %s: %s", job_id, event["message"])
            if record["status"] in DONE or job.cancelled():
                return record
            time.sleep(self.poll_interval_s)

    def _gateway(self, job: TrainingJob) -> Gateway:
        """The gateway this job talks to: this provider's settings, else the LM's, else OPENAI_BASE_URL/_API_KEY."""
        lm_kwargs = getattr(_lm_of(job, self), "kwargs", None) or {}
        api_base = (
            self.api_base or lm_kwargs.get("api_base") or lm_kwargs.get("base_url") or os.getenv("OPENAI_BASE_URL")
        )
        if not api_base:
            raise InvalidArguments(
                "api_base: no gateway to fine-tune on: create the LM with api_base='http://<gateway>/v1' "
                "(or give Provider(api_base=...), or set OPENAI_BASE_URL)"
            )
        api_key = self.api_key or lm_kwargs.get("api_key") or os.getenv("OPENAI_API_KEY")
        return Gateway(str(api_base), str(api_key) if api_key else None, self.timeout_s)


def _body(model: str, training_file: str, train_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The job's create body: OpenAI's hyperparameters under ``hyperparameters``, the other settings beside them."""
    settings = dict(train_kwargs or {})
    hyper = {key: settings.pop(key) for key in HYPERPARAMETERS if key in settings}
    body: dict[str, Any] = {**settings, "model": model, "training_file": training_file}
    if hyper:
        body["hyperparameters"] = {**(body.get("hyperparameters") or {}), **hyper}
    return body


def _lm_of(job: TrainingJob, provider: Provider) -> Any:
    """The ``dspy.LM`` whose ``finetune`` started ``job``, or None.

    DSPy hands a provider the job, never the LM; the job's thread runs a closure
    of ``LM.finetune`` over the LM (or a bound method or partial of it), so the
    LM is found there, as the one object whose provider is this one.
    """
    target = getattr(getattr(job, "thread", None), "_target", None)
    held: list[Any] = []
    if isinstance(target, functools.partial):
        held.extend(target.args)
        target = target.func
    held.append(getattr(target, "__self__", None))
    for cell in getattr(target, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # a cell not bound yet
            held.append(cell.cell_contents)
    return next((obj for obj in held if getattr(obj, "provider", None) is provider), None)
