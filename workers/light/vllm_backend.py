"""The vLLM backend: vLLM's async engine inside the actor (continuous batching is vLLM's own).

vLLM cannot be installed in this project's test environments, so everything
that can be is a pure function (``engine_args``, ``sampling_args``,
``gpu_share``) unit-tested without vLLM; the engine glue below stays small.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import threading
import uuid
from typing import Any

from workers.light.batching import Job
from workers.light.params import Row


def gpu_share(explicit: float | None, assigned_gpus: float | None) -> float:
    """The fraction of one GPU vLLM may fill: the option if set, else the pool's Ray GPU share (x 0.9 headroom)."""
    if explicit is not None:
        if not 0 < explicit <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {explicit}")
        return explicit
    if assigned_gpus is None or assigned_gpus <= 0:
        return 0.9
    return round(min(assigned_gpus, 1.0) * 0.9, 4)


def engine_args(
    model: str,
    dtype: str = "auto",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    enable_lora: bool = True,
    max_loras: int = 4,
    max_lora_rank: int = 64,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs``."""
    args: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "trust_remote_code": trust_remote_code,
        "enable_lora": enable_lora,
    }
    if enable_lora:
        args.update(max_loras=max_loras, max_lora_rank=max_lora_rank)
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    return args


def sampling_args(row: Row) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` of one row (one choice: ``n`` is expanded into rows)."""
    args: dict[str, Any] = {
        "n": 1,
        "max_tokens": row.max_tokens,
        "temperature": row.temperature,
        "top_p": row.top_p,
        "stop": list(row.stop) or None,
        "include_stop_str_in_output": False,
    }
    if row.seed is not None:
        args["seed"] = row.seed
    if row.schema is not None:
        args.update(structured_outputs(row.schema))
    return args


def structured_outputs(schema: dict[str, Any]) -> dict[str, Any]:
    """vLLM's own structured outputs for a JSON schema (``structured_outputs``, or ``guided_decoding`` before 0.11)."""
    params: Any = importlib.import_module("vllm.sampling_params")
    if hasattr(params, "StructuredOutputsParams"):
        return {"structured_outputs": params.StructuredOutputsParams(json=schema)}
    return {"guided_decoding": params.GuidedDecodingParams(json=schema)}


def finish_reason(vllm_reason: str | None) -> str:
    """vLLM's finish reason in OpenAI's words (``stop`` or ``length``)."""
    return "length" if vllm_reason == "length" else "stop"


class VllmBackend:
    """Same surface as TransformersBackend, over ``vllm.AsyncLLMEngine`` on its own event loop thread."""

    name = "vllm"

    def __init__(self, model: str, **options: Any) -> None:
        vllm: Any = importlib.import_module("vllm")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True).start()
        self.engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**engine_args(model, **options)))
        self.tokenizer = asyncio.run_coroutine_threadsafe(self.engine.get_tokenizer(), self.loop).result()
        config = asyncio.run_coroutine_threadsafe(self.engine.get_model_config(), self.loop).result()
        self.context_length = int(config.max_model_len)
        bos = self.tokenizer.bos_token_id
        self.start_id = int(bos if bos is not None else self.tokenizer.eos_token_id)
        self.adapters: dict[str, tuple[int, str]] = {}
        self.ids = itertools.count(1)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied, ending with the assistant's turn."""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def submit(self, job: Job) -> Job:
        """Start every row of the job on the engine; events go to the job's queue."""
        if job.adapter is not None and job.adapter not in self.adapters:
            raise KeyError(job.adapter)
        job.batch_size = len(job.rows)
        for row in job.rows:
            asyncio.run_coroutine_threadsafe(self._row(job, row), self.loop)
        return job

    async def _row(self, job: Job, row: Row) -> None:
        vllm: Any = importlib.import_module("vllm")
        lora = None
        if job.adapter is not None:
            lora_id, path = self.adapters[job.adapter]
            lora = importlib.import_module("vllm.lora.request").LoRARequest(job.adapter, lora_id, path)
        request_id = uuid.uuid4().hex
        sent = 0
        try:
            stream = self.engine.generate(
                vllm.TokensPrompt(prompt_token_ids=row.prompt_ids),
                vllm.SamplingParams(**sampling_args(row)),
                request_id,
                lora_request=lora,
            )
            async for output in stream:
                choice = output.outputs[0]
                job.delta(row.index, choice.text[sent:])
                sent = len(choice.text)
                if job.cancelled():
                    await self.engine.abort(request_id)
                    job.finish(row.index, "cancelled", len(choice.token_ids))
                    return
                if output.finished:
                    job.finish(row.index, finish_reason(choice.finish_reason), len(choice.token_ids))
                    return
        except BaseException as exc:
            job.fail(exc)

    def load_adapter(self, name: str, path: str) -> None:
        """Register a LoRA adapter (vLLM loads it on first use)."""
        self.adapters[name] = (next(self.ids), path)

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter."""
        del self.adapters[name]

    def close(self) -> None:
        """Stop the engine's loop."""
        self.loop.call_soon_threadsafe(self.loop.stop)
