"""The light pool's worker: LLM inference ops over a transformers or vLLM backend.

Ops: ``generate`` / ``generate_stream`` (prompts), ``chat`` / ``chat_stream``
(messages), ``models``, ``tokenize``, ``load_adapter`` / ``unload_adapter``
(LoRA, served under their own model names) and ``stats`` (recent batch sizes).
The generation ops take OpenAI's ``response_format`` (JSON mode and JSON schemas,
through constrained decoding: see :mod:`workers.light.structured`).
A result is ``{"model", "choices": [{"index", "text", "finish_reason"}],
"usage": {...}, "batch_size"}``; a streaming op yields ``{"index", "text"}``
deltas (and ``finish_reason`` when a choice ends) and returns the same result.

What a client may ask is bounded before any work starts: a request's rows
(prompts x ``n``) fit one batch (``max_batch``), ``load_adapter`` reads only
under ``adapter_dir`` (:func:`~orchestrator.contract.confined_path`), and an
actor holds at most ``max_adapters`` adapters.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

from orchestrator import Context, Worker, op
from orchestrator.contract import confined_path
from orchestrator.contract.paths import ADAPTER_NAME, FINE_TUNED, state_dir
from orchestrator.errors import InvalidArguments, InvalidConfig
from orchestrator.models.tiny import TINY_NAME, build_tiny_model, default_tiny_dir
from workers.light.batching import Job
from workers.light.params import (
    MaxTokens,
    Messages,
    N,
    Row,
    Stop,
    Temperature,
    TopP,
    check_messages,
    check_sampling,
    normalize_stop,
    resolve_max_tokens,
    row_seed,
)
from workers.light.structured import parse_response_format

Result = dict[str, Any]
Events = Generator[dict[str, Any], None, Result]
TINY_MAX_STRING = 48


def looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id (``org/name``)."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model or os.path.exists(model)


def choose_backend(backend: str) -> str:
    """``auto`` is vLLM when it imports and CUDA is present, else transformers."""
    if backend != "auto":
        return backend
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    torch: Any = importlib.import_module("torch")
    return "vllm" if torch.cuda.is_available() else "transformers"


def ray_gpu_share() -> float | None:
    """The GPUs Ray assigned this actor (None outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)) or None
    except Exception:
        return None


class Light(Worker):
    """LLM inference. Options come from pools.yaml (``options``); all have offline-safe defaults.

    - ``model``: a local folder or a hub id; empty builds and serves the tiny local model
      (into ``tiny_dir``, default ``~/.cache/orchestrator/models/tiny`` or ``$ORCHESTRATOR_CACHE``).
    - ``name``: the served name (``<pool>/<name>``); default the folder name or the hub id.
    - ``backend``: ``auto`` (vLLM when it imports and CUDA is present), ``transformers`` or ``vllm``.
    - ``device``/``dtype``: transformers placement (``auto``: CUDA + bfloat16 if present, else CPU + float32).
    - ``max_batch``/``batch_window_ms``: rows per ``generate`` call, and how long to wait for company
      when requests overlap (set ``limits.concurrency`` >= ``max_batch`` so they can). One request
      (prompts x ``n``) may not exceed ``max_batch`` rows.
    - ``max_tokens_default``: for requests that give no ``max_tokens`` (capped by the context).
    - ``max_model_len``: override the context length.
    - ``gpu_memory_utilization``: the GPU share (default: the pool's ``num_gpus``; vLLM takes 0.9 of it).
    - ``threads``: torch CPU threads (Ray gives an actor one unless told otherwise).
    - ``adapters``: ``{name: path}`` LoRA adapters loaded at start, on every actor (any path: the operator's).
    - ``adapter_dir``: the folder a client's ``load_adapter`` paths are relative to (nothing outside it loads).
    - ``max_adapters``: adapters one actor holds at most, ``adapters`` included.
    - ``json_max_string``: structured outputs (``response_format``) bound every JSON string the schema
      leaves unbounded to this many characters (default: none; 48 for the tiny model, whose random
      weights would otherwise never close a string).
    """

    def __init__(
        self,
        model: str = "",
        name: str | None = None,
        backend: Literal["auto", "transformers", "vllm"] = "auto",
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 8,
        batch_window_ms: float = 5.0,
        max_tokens_default: int = 256,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        threads: int | None = None,
        adapters: dict[str, str] | None = None,
        trust_remote_code: bool = False,
        tiny_dir: str | None = None,
        adapter_dir: str = "~/.cache/orchestrator/adapters",
        max_adapters: int = 8,
        json_max_string: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise InvalidConfig(f"options.max_batch: must be >= 1, got {max_batch}")
        if max_adapters < 0:
            raise InvalidConfig(f"options.max_adapters: must be >= 0, got {max_adapters}")
        if len(adapters or {}) > max_adapters:
            raise InvalidConfig(
                f"options.adapters: {len(adapters or {})} adapters; options.max_adapters is {max_adapters}"
            )
        if json_max_string is not None and json_max_string < 1:
            raise InvalidConfig(f"options.json_max_string: must be >= 1, got {json_max_string}")
        if not model:  # nothing configured: serve the tiny local model (works offline)
            model = str(build_tiny_model(tiny_dir or default_tiny_dir()))
            name = name or TINY_NAME
            json_max_string = json_max_string or TINY_MAX_STRING  # random weights: bound strings so JSON ends
        elif looks_like_path(model):
            path = Path(model).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"model path {model} does not exist (options.model)")
            model = str(path.resolve())
        self.name = name or (Path(model).name if looks_like_path(model) else model)
        self.source = model  # where the base model loads from (a folder or a hub id): fine-tuning starts there
        self.max_tokens_default = max_tokens_default
        self.max_batch = max_batch
        self.json_max_string = json_max_string
        self.adapter_dir = Path(adapter_dir).expanduser().resolve()
        self.max_adapters = max_adapters
        self.adapter_lock = threading.Lock()  # the adapter count is checked and changed as one step
        if threads:
            importlib.import_module("torch").set_num_threads(threads)
        self.backend_name = choose_backend(backend)
        share = gpu_memory_utilization
        if share is None:
            share = ray_gpu_share()
        self.backend: Any
        if self.backend_name == "vllm":
            from workers.light.vllm_backend import VllmBackend, gpu_share

            self.backend = VllmBackend(
                model,
                dtype=dtype,
                gpu_memory_utilization=gpu_share(gpu_memory_utilization, ray_gpu_share()),
                max_model_len=max_model_len,
                trust_remote_code=trust_remote_code,
            )
        else:
            from workers.light.hf import TransformersBackend

            self.backend = TransformersBackend(
                model,
                device=device,
                dtype=dtype,
                max_batch=max_batch,
                batch_window_s=batch_window_ms / 1000,
                max_model_len=max_model_len,
                gpu_memory_fraction=share,
                trust_remote_code=trust_remote_code,
            )
        for adapter, adapter_path in (adapters or {}).items():
            path = Path(adapter_path).expanduser()
            if not path.exists() or adapter == self.name:
                problem = "is the base model's name" if path.exists() else f"{adapter_path} does not exist"
                raise InvalidConfig(f"options.adapters.{adapter}: {problem}")
            self._load_adapter(adapter, path.resolve())

    # ---------------------------------------------------------------- catalogue
    @op
    def models(self) -> list[dict[str, Any]]:
        """The base model and every loaded adapter, by the name requests use."""
        base = {"id": self.name, "kind": "base", "context_length": self.backend.context_length, "source": self.source}
        adapters = [{"id": a, "kind": "adapter", "base": self.name} for a in self.backend.adapters]
        return [{**base, "backend": self.backend_name}, *adapters]

    @op
    def tokenize(self, text: str | None = None, messages: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """Count the tokens of ``text``, or of ``messages`` with the chat template applied."""
        if messages is not None:
            text = self._chat_prompt(parse_messages(messages))
        if text is None:
            raise InvalidArguments("give text or messages", detail=[{"field": "text", "message": "required"}])
        return {"count": len(self.backend.encode(text))}

    @op
    def stats(self) -> dict[str, Any]:
        """Backend facts and the rows per generate call of recent batches (most recent last)."""
        batcher = getattr(self.backend, "batcher", None)
        return {
            "backend": self.backend_name,
            "device": getattr(self.backend, "device", "cuda"),
            "batch_sizes": list(batcher.sizes) if batcher else [],
        }

    @op(remember="adapter:{name}")
    def load_adapter(self, name: str, path: str) -> list[dict[str, Any]]:
        """Load a LoRA adapter (peft format) on every actor of the pool (and on actors that start later); it is
        served as model ``name``. ``path`` is relative to the pool's ``adapter_dir``, or ``fine-tuned/<name>``
        for an adapter a heavy-pool ``finetune`` job saved. Loading a name again replaces that adapter."""
        if not ADAPTER_NAME.fullmatch(name):
            raise _invalid(
                "name",
                f"{name!r} is not a model name (a letter or digit, then up to 127 of: letters, digits, _ . : -)",
                "load_adapter",
            )
        root, where = self.adapter_dir, "options.adapter_dir"
        if path.startswith(FINE_TUNED):
            root, path, where = state_dir() / "adapters", path.removeprefix(FINE_TUNED), "state_dir/adapters"
        resolved = confined_path(root, path, "path", "load_adapter")
        if not (resolved / "adapter_config.json").is_file():
            message = f"no LoRA adapter (adapter_config.json) at {path!r} under {where}"
            raise _invalid("path", message, "load_adapter")
        self._load_adapter(name, resolved)
        return self.models()

    @op(forget="adapter:{name}")
    def unload_adapter(self, name: str) -> list[dict[str, Any]]:
        """Stop serving adapter ``name``."""
        if name not in self.backend.adapters:
            raise _model_not_found(name, self.models())
        self.backend.unload_adapter(name)
        return self.models()

    def _load_adapter(self, name: str, path: Path) -> None:
        """Load adapter ``name`` from ``path`` (trusted: confined, or the operator's) if this actor has room."""
        if name == self.name:
            raise _invalid("name", f"{name!r} is the base model's name", "load_adapter")
        with self.adapter_lock:
            held = len(self.backend.adapters)
            if name not in self.backend.adapters and held >= self.max_adapters:
                message = (
                    f"this actor holds {held} adapters; this pool takes at most {self.max_adapters} "
                    "(options.max_adapters): unload one first"
                )
                raise _invalid("name", message, "load_adapter")
            self.backend.load_adapter(name, str(path))

    # --------------------------------------------------------------- generation
    @op
    def generate(
        self,
        ctx: Context,
        prompt: str | list[str],
        model: str | None = None,
        max_tokens: MaxTokens = 16,
        temperature: Temperature = 1.0,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: int | None = None,
        n: N = 1,
        response_format: dict[str, Any] | None = None,
    ) -> Result:
        """Complete ``prompt`` (or each of a list of prompts)."""
        sampling = (max_tokens, temperature, top_p, stop, seed, n, response_format)
        job, usage = self._start(ctx, _prompts(prompt), model, *sampling, streaming=False)
        return _collect(job, usage, self._model_name(ctx, model))

    @op
    def generate_stream(
        self,
        ctx: Context,
        prompt: str | list[str],
        model: str | None = None,
        max_tokens: MaxTokens = 16,
        temperature: Temperature = 1.0,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: int | None = None,
        n: N = 1,
        response_format: dict[str, Any] | None = None,
    ) -> Events:
        """``generate``, streaming text deltas as tokens are made."""
        sampling = (max_tokens, temperature, top_p, stop, seed, n, response_format)
        job, usage = self._start(ctx, _prompts(prompt), model, *sampling)
        return (yield from _events(job, usage, self._model_name(ctx, model)))

    @op
    def chat(
        self,
        ctx: Context,
        messages: Messages,
        model: str | None = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = 1.0,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: int | None = None,
        n: N = 1,
        response_format: dict[str, Any] | None = None,
    ) -> Result:
        """Answer a conversation with the model's chat template."""
        prompts = [self._chat_prompt(messages)]
        sampling = (max_tokens, temperature, top_p, stop, seed, n, response_format)
        job, usage = self._start(ctx, prompts, model, *sampling, streaming=False)
        return _collect(job, usage, self._model_name(ctx, model))

    @op
    def chat_stream(
        self,
        ctx: Context,
        messages: Messages,
        model: str | None = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = 1.0,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: int | None = None,
        n: N = 1,
        response_format: dict[str, Any] | None = None,
    ) -> Events:
        """``chat``, streaming text deltas as tokens are made."""
        prompts = [self._chat_prompt(messages)]
        sampling = (max_tokens, temperature, top_p, stop, seed, n, response_format)
        job, usage = self._start(ctx, prompts, model, *sampling)
        return (yield from _events(job, usage, self._model_name(ctx, model)))

    # ---------------------------------------------------------------- internals
    def _chat_prompt(self, messages: list[Any]) -> str:
        check_messages(messages)
        return str(self.backend.chat_prompt([{"role": m.role, "content": m.text()} for m in messages]))

    def _model_name(self, ctx: Context, model: str | None) -> str:
        name = self._adapter(ctx, model) or self.name
        return f"{ctx.pool}/{name}"

    def _adapter(self, ctx: Context, model: str | None) -> str | None:
        """The adapter a request names (None: the base model); unknown names are model_not_found."""
        if model is None:
            return None
        name = model.removeprefix(f"{ctx.pool}/")
        if name in (self.name, ctx.pool, ""):
            return None
        if name in self.backend.adapters:
            return name
        raise _model_not_found(model, self.models())

    def _start(
        self,
        ctx: Context,
        prompts: list[str],
        model: str | None,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: str | list[str] | None,
        seed: int | None,
        n: int,
        response_format: dict[str, Any] | None = None,
        streaming: bool = True,
    ) -> tuple[Job, dict[str, int]]:
        check_sampling(max_tokens, temperature, top_p, n)
        self._check_rows(len(prompts), n)
        adapter = self._adapter(ctx, model)
        stops = normalize_stop(stop)
        schema = parse_response_format(response_format, self.json_max_string)
        rows: list[Row] = []
        prompt_tokens = 0
        for prompt in prompts:
            ids = self.backend.encode(prompt) or [self.backend.start_id]  # an empty prompt starts from BOS/EOS
            prompt_tokens += len(ids)
            limit = resolve_max_tokens(max_tokens, len(ids), self.backend.context_length, self.max_tokens_default)
            for choice in range(n):
                rows.append(Row(len(rows), ids, limit, temperature, top_p, row_seed(seed, choice), stops, schema))
        job = self.backend.submit(Job(rows, adapter, lambda: ctx.cancelled, streaming))
        return job, {"prompt_tokens": prompt_tokens}

    def _check_rows(self, prompts: int, n: int) -> None:
        """One request is one batch at most: ``prompts`` x ``n`` rows within ``max_batch``."""
        if prompts * n <= self.max_batch:
            return
        field = "prompt" if prompts > self.max_batch else "n"
        message = (
            f"{prompts} prompt(s) x n={n} is {prompts * n} rows; this pool takes at most {self.max_batch} "
            "per request (options.max_batch)"
        )
        raise _invalid(field, message)

    def close(self) -> None:
        """Stop the backend's threads."""
        self.backend.close()


def parse_messages(raw: list[dict[str, Any]]) -> list[Any]:
    """Validate raw message dicts (the ``tokenize`` op takes them untyped)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return list(TypeAdapter(Messages).validate_python(raw))
    except ValidationError as exc:
        raise InvalidArguments(f"messages: {exc.errors()[0]['msg']}", detail=[{"field": "messages"}]) from None


def _prompts(prompt: str | list[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InvalidArguments("prompt: at least one prompt", detail=[{"field": "prompt", "message": "empty list"}])
    return prompts


def _invalid(field: str, message: str, op: str | None = None) -> InvalidArguments:
    """An invalid_arguments error naming ``field``."""
    return InvalidArguments(f"{field}: {message}", op=op, detail=[{"field": field, "message": message}])


def _model_not_found(model: str, models: list[dict[str, Any]]) -> InvalidArguments:
    known = ", ".join(m["id"] for m in models)
    return InvalidArguments(
        f"model {model!r} is not served here (models: {known})",
        detail=[{"field": "model", "message": "not found", "code": "model_not_found"}],
    )


def _events(job: Job, usage: dict[str, int], model: str) -> Events:
    texts = [""] * len(job.rows)
    reasons = ["length"] * len(job.rows)
    completion = 0
    for event in job.stream():
        if event[0] == "delta":
            texts[event[1]] += event[2]
            yield {"index": event[1], "text": event[2]}
        else:
            _, index, reason, tokens, text = event
            texts[index] += text  # a non-streaming job's whole text comes with its finish
            reasons[index] = reason
            completion += tokens
            yield {"index": index, "text": "", "finish_reason": reason}
    return _result(texts, reasons, usage["prompt_tokens"], completion, model, job.batch_size)


def _collect(job: Job, usage: dict[str, int], model: str) -> Result:
    events = _events(job, usage, model)
    while True:
        try:
            next(events)
        except StopIteration as done:
            return dict(done.value)


def _result(texts: list[str], reasons: list[str], prompt: int, completion: int, model: str, batch: int) -> Result:
    choices = [{"index": i, "text": t, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"model": model, "choices": choices, "usage": usage, "batch_size": batch}
