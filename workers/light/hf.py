"""The transformers backend: any causal LM by local path or hub id, micro-batched, on CPU or CUDA.

One ``generate`` call serves a whole batch (left padding). Two hooks make the
rows of one batch independent of each other:

- ``RowSampler`` (a logits processor, only when a row samples) samples each
  row with its own temperature, top_p and seeded generator, then leaves only
  the chosen token for ``generate``'s greedy pick: a seeded request gives the
  same text whatever it is batched with.
- ``GrammarMask`` (first, only when a row has a ``response_format``) masks the
  tokens each constrained row's JSON schema does not allow next.
- ``RowWatcher`` (a stopping criterion) feeds each new token to the row's
  ``TextAccumulator``, hands the text to the job (per token when it streams,
  once at the end when not), and ends rows on EOS, a stop string, their own
  ``max_tokens`` or a cancelled caller.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from workers.light.batching import Batcher, Job
from workers.light.params import Row, TextAccumulator
from workers.light.structured import GrammarMask, Grammars


def _torch() -> Any:
    return importlib.import_module("torch")


def _transformers() -> Any:
    return importlib.import_module("transformers")


def pick_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else CPU."""
    if device != "auto":
        return device
    return "cuda" if _torch().cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """``auto`` is bfloat16 on CUDA and float32 on CPU."""
    torch = _torch()
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class RowSampler:
    """Logits processor: per-row temperature / top_p / seed sampling; greedy rows pass through."""

    def __init__(self, rows: list[Row], device: str) -> None:
        torch = _torch()
        self.rows = rows
        self.generators: list[Any] = []
        for row in rows:
            gen = torch.Generator(device=device)
            if row.seed is not None:
                gen.manual_seed(row.seed)
            else:
                gen.seed()
            self.generators.append(gen)
        self.sampled = [i for i, row in enumerate(rows) if row.temperature > 0]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if not self.sampled:
            return scores
        torch = _torch()
        for i in self.sampled:
            row = self.rows[i]
            logits = scores[i] / row.temperature
            probs = torch.softmax(logits, dim=-1)
            if row.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < row.top_p
                mask = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, keep)
                probs = torch.where(mask, probs, torch.zeros_like(probs))
            choice = torch.multinomial(probs, 1, generator=self.generators[i])
            scores[i] = float("-inf")
            scores[i, choice] = 0.0
        return scores


class RowWatcher:
    """Stopping criterion: feeds each row's tokens to its text, and says which rows are done.

    A streaming job gets each row's text as it grows; a non-streaming one
    (``Job.streaming`` false) gets it once, when the row ends, so its op thread
    wakes once per row rather than once per token.
    """

    def __init__(self, rows: list[tuple[Job, Row]], decode: Any, eos: set[int], device: str) -> None:
        self.rows = rows
        self.text = [TextAccumulator(decode, row.stop, lazy=not job.streaming) for job, row in rows]
        self.open = list(range(len(rows)))  # rows still generating
        self.eos = eos
        self.device = device
        self.steps = 0
        self.done = _torch().zeros(len(rows), dtype=_torch().bool, device=device)  # a new tensor when a row ends

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        self.steps += 1
        last = input_ids[:, -1].tolist()
        ended = []
        for i in self.open:
            job, row = self.rows[i]
            token = last[i]
            if token in self.eos:
                ended.append((i, "stop"))
                continue
            text = self.text[i]
            job.delta(row.index, text.add(token))
            if text.stopped:
                ended.append((i, "stop"))
            elif self.steps >= row.max_tokens:
                ended.append((i, "length"))
            elif job.cancelled():
                ended.append((i, "cancelled"))
        if ended:
            for i, reason in ended:
                self._end(i, reason)
            done = self.done.clone()  # generate may hold on to the one it got
            done[[i for i, _ in ended]] = True
            self.done = done
        return self.done

    def _end(self, i: int, reason: str) -> None:
        job, row = self.rows[i]
        text = self.text[i]
        job.delta(row.index, text.finish())
        if text.stopped and reason == "length":  # the last text, released only now, held a stop string
            reason = "stop"
        self.open.remove(i)
        job.finish(row.index, reason, self.steps)  # an EOS token counts, as OpenAI counts it

    def close(self) -> None:
        """Generation ended: rows still open ran out of tokens."""
        for i in list(self.open):
            self._end(i, "length")


class TransformersBackend:
    """Loads the model and tokenizer, applies chat templates, runs batches, holds LoRA adapters."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 8,
        batch_window_s: float = 0.005,
        max_model_len: int | None = None,
        gpu_memory_fraction: float | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        tf = _transformers()
        torch = _torch()
        self.device = pick_device(device)
        if self.device.startswith("cuda") and gpu_memory_fraction:
            # transformers has no memory budget of its own: cap this process's share of the GPU.
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_fraction))
        self.tokenizer = tf.AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = tf.AutoModelForCausalLM.from_pretrained(
            model, dtype=pick_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.base = self.model
        self.adapters: dict[str, str] = {}
        self.lock = threading.Lock()  # adapters change only between batches
        config = self.model.config
        self.context_length = int(
            max_model_len or getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        eos_ids.append(self.tokenizer.eos_token_id)
        self.eos: set[int] = {int(e) for e in eos_ids if e is not None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos))
        bos = self.tokenizer.bos_token_id
        self.start_id = int(bos if bos is not None else min(self.eos))
        self.grammars = Grammars(self.tokenizer, int(config.vocab_size), self.eos)
        self.batcher = Batcher(self._run, max_rows=max_batch, window_s=batch_window_s, name="light-generate")

    # -------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in the text are parsed, as chat templates need)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens.

        No clean-up of spaces (`` .`` -> ``.``): it re-spells text across token
        boundaries, which a streamed text cannot take back (vLLM and TGI skip it too).
        """
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied, ending with the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant:"
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    # ----------------------------------------------------------- generation
    def submit(self, job: Job) -> Job:
        """Queue a job for the next batch."""
        if job.adapter is not None and job.adapter not in self.adapters:
            raise KeyError(job.adapter)
        return self.batcher.submit(job)

    def _run(self, jobs: list[Job]) -> None:
        tf = _transformers()
        torch = _torch()
        rows = [(job, row) for job in jobs for row in job.rows]
        width = max(len(row.prompt_ids) for _, row in rows)
        ids = [[self.pad_id] * (width - len(row.prompt_ids)) + row.prompt_ids for _, row in rows]
        mask = [[0] * (width - len(row.prompt_ids)) + [1] * len(row.prompt_ids) for _, row in rows]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        watcher = RowWatcher(rows, self.decode, self.eos, self.device)
        config = tf.GenerationConfig(
            max_new_tokens=max(row.max_tokens for _, row in rows),
            do_sample=False,  # RowSampler has already chosen each sampled row's token
            num_beams=1,
            eos_token_id=sorted(self.eos),
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
        )
        processors: list[Any] = []
        if any(row.temperature > 0 for _, row in rows):  # all greedy: generate's own argmax picks
            processors.append(RowSampler([r for _, r in rows], self.device))
        if any(row.schema is not None for _, row in rows):  # structured outputs: mask before sampling
            processors.insert(0, GrammarMask([row.schema for _, row in rows], self.grammars))
        with self.lock:
            model = self._model_for(jobs[0].adapter)
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=tf.LogitsProcessorList(processors),
                    stopping_criteria=tf.StoppingCriteriaList([watcher]),
                )
        watcher.close()

    # -------------------------------------------------------------- adapters
    def _model_for(self, adapter: str | None) -> Any:
        if not self.adapters:
            return self.base
        if adapter is None:
            return _DisabledAdapters(self.model)
        self.model.set_adapter(adapter)
        return self.model

    def load_adapter(self, name: str, path: str) -> None:
        """Load a peft LoRA adapter from ``path`` under ``name``, replacing one of that name
        (if the new one then fails to load, ``name`` is no longer served)."""
        with self.lock:
            if name in self.adapters:  # drop the old one whole: peft would pour new weights into its old shapes
                self._drop(name)
            if not self.adapters:
                peft: Any = importlib.import_module("peft")
                self.model = peft.PeftModel.from_pretrained(self.base, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        """Drop an adapter (the base model stays)."""
        with self.lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.adapters[name]
        if not self.adapters:
            self.base = self.model.unload()
            self.model = self.base

    def close(self) -> None:
        """Stop the generation thread."""
        self.batcher.close()


class _DisabledAdapters:
    """``generate`` on a PeftModel with its adapters switched off (the base model's answers)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def generate(self, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model.generate(**kwargs)
