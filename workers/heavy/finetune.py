"""LoRA fine-tuning with trl's ``SFTTrainer`` and peft's ``LoraConfig`` as a resumable job.

The data is chat rows (``{"messages": [...]}``: the loss is on the assistant
turns only) or prompt/completion rows (the loss is on the completion), inline or
from an uploaded file. ``train`` runs in a thread
(:class:`~workers.heavy.handoff.Handoff`); trainer callbacks hand the job one
event per logging step (``{"step", "loss", "learning_rate", "epoch"}``, with
progress) and one per saved checkpoint (``{"checkpoint": {"step", "path"}}``).
Checkpoints are written to the job's folder
(``ctx.job_dir``: shared storage on a cluster) and recorded with
``ctx.checkpoint``; a re-run resumes from the last one (``resume_from_checkpoint``),
so step numbers continue and no step is logged twice. The adapter is saved to
``state_dir/adapters/<name>``, where the light pool's ``load_adapter`` finds it
as ``fine-tuned/<name>``. On a CUDA host it trains on the GPU in bf16.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import Context
from orchestrator.contract.paths import state_dir
from orchestrator.errors import first_line
from workers.heavy.handoff import Handoff
from workers.heavy.programs import invalid

Events = Generator[dict[str, Any], None, dict[str, Any]]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ROLES = {"system", "user", "assistant", "tool"}


class LoRA(BaseModel):
    """peft's LoraConfig: the adapter's rank, scale, dropout and the modules it wraps."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, le=1024)
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class Hyper(BaseModel):
    """Training settings (``n_epochs`` unless ``max_steps`` is set)."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: int = Field(3, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_length: int = Field(1024, ge=8, le=1 << 20)
    seed: int = 42
    save_steps: int = Field(10, ge=1, description="Steps between checkpoints (a re-run resumes from the last).")
    logging_steps: int = Field(1, ge=1)


def rows_format(rows: list[dict[str, Any]], field: str) -> str:
    """``chat`` or ``prompt_completion``; every row in the same one (a bad row is named, e.g. ``training_data.3``)."""
    if not rows:
        raise invalid(field, "no rows")
    kinds = set()
    for i, row in enumerate(rows):
        where = f"{field}.{i}"
        if not isinstance(row, dict):
            raise invalid(where, "each row is an object")
        if "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list) or not messages:
                raise invalid(f"{where}.messages", "a non-empty list of {role, content}")
            for j, message in enumerate(messages):
                if not isinstance(message, dict) or message.get("role") not in ROLES:
                    raise invalid(f"{where}.messages.{j}.role", f"one of {', '.join(sorted(ROLES))}")
                if not isinstance(message.get("content"), str):
                    raise invalid(f"{where}.messages.{j}.content", "a string")
            if not any(m["role"] == "assistant" for m in messages):
                raise invalid(f"{where}.messages", "no assistant turn to learn from")
            kinds.add("chat")
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            kinds.add("prompt_completion")
        else:
            raise invalid(where, "needs 'messages' (chat) or 'prompt' and 'completion' strings")
        if len(kinds) > 1:
            raise invalid(where, "mixes chat rows and prompt/completion rows")
    return kinds.pop()


def jsonl_rows(data: bytes, field: str) -> list[dict[str, Any]]:
    """An uploaded JSONL file's rows (a bad line is named by number, from 1)."""
    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise invalid(f"{field}.line {number}", f"not JSON: {exc.msg}") from None
    return rows


def base_source(model: str, pools: list[str], served: Any) -> tuple[str, str | None]:
    """Where the base model loads from, and the pool serving it (or None): a pool model ``light/tiny``
    (its source), a local folder, or a hub id. ``served(pool)`` lists a pool's models."""
    pool, _, name = model.partition("/")
    if pool in pools:
        models = served(pool)
        bases = {m["id"]: m for m in models if m.get("kind") == "base"}
        if name not in bases:
            known = ", ".join(bases) or "none"
            raise invalid("model", f"pool {pool!r} serves no base model {name!r} (base models: {known})")
        if not bases[name].get("source"):
            raise invalid("model", f"pool {pool!r} does not say where {name!r} loads from")
        return str(bases[name]["source"]), pool
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    if model.startswith((".", "/", "~")) or not HUB_ID.fullmatch(model):
        raise invalid("model", f"{model!r} is not a pool model (pools: {', '.join(pools)}), a folder or a hub id")
    return model, None


def train(
    ctx: Context,
    source: str,
    rows: list[dict[str, Any]],
    validation: list[dict[str, Any]] | None,
    lora: LoRA,
    hyper: Hyper,
    name: str,
) -> Events:
    """Fine-tune a LoRA adapter on ``rows``; yields one event per logging step; returns the adapter's folder
    and the trainer's final metrics."""
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    trl: Any = importlib.import_module("trl")
    peft: Any = importlib.import_module("peft")
    datasets: Any = importlib.import_module("datasets")

    chat = rows_format(rows, "training_data") == "chat"
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if bf16 else None)
    except (OSError, ValueError) as exc:  # not a model folder, or a hub id that cannot be fetched
        raise invalid("model", f"cannot load {source}: {first_line(exc)}") from None
    output_dir = ctx.job_dir / "trainer"
    assistant_only = chat and marks_assistant_turns(trl, tokenizer)
    config = sft_config(trl, hyper, output_dir, assistant_only, evaluate=bool(validation), cuda=cuda, bf16=bf16)
    handoff = Handoff(ctx)
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(validation) if validation else None,
        processing_class=tokenizer,
        peft_config=lora_config(peft, lora),
        callbacks=[_callback(transformers, handoff)],
    )
    resume = (ctx.resume or {}).get("checkpoint")
    if resume is not None and not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint {resume} is gone: is state_dir on storage every node shares?")

    outcome: Any = None
    for kind, payload in handoff.items(lambda: trainer.train(resume_from_checkpoint=resume), "finetune"):
        if kind == "done":
            outcome = payload
        elif kind == "log":
            ctx.progress(done=payload["step"], total=payload.pop("total"))
            yield payload
        elif kind == "saved":
            path = str(output_dir / f"checkpoint-{payload}")
            yield {"checkpoint": {"step": payload, "path": path}}
            ctx.checkpoint({"step": payload, "checkpoint": path})

    if ctx.cancelled:
        return {"adapter": None, "steps": int(trainer.state.global_step), "metrics": {}, "cancelled": True}
    adapter = state_dir() / "adapters" / name
    if adapter.exists():
        shutil.rmtree(adapter)
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    metrics = {k: v for k, v in dict(outcome.metrics).items() if isinstance(v, int | float)}
    return {"adapter": str(adapter), "steps": int(trainer.state.global_step), "metrics": metrics}


def sft_config(
    trl: Any, hyper: Hyper, output_dir: Path, assistant_only_loss: bool, *, evaluate: bool, cuda: bool, bf16: bool
) -> Any:
    """trl's ``SFTConfig`` for these settings (bench/finetune.py trains its bare-trl anchor with it too)."""
    return trl.SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=hyper.n_epochs,
        max_steps=hyper.max_steps or -1,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        max_length=hyper.max_length,
        seed=hyper.seed,
        data_seed=hyper.seed,
        save_strategy="steps",
        save_steps=hyper.save_steps,
        save_total_limit=2,  # the last one resumes; one more while the next is written
        logging_steps=hyper.logging_steps,
        eval_strategy="epoch" if evaluate else "no",
        assistant_only_loss=assistant_only_loss,
        bf16=bf16,
        use_cpu=not cuda,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def lora_config(peft: Any, lora: LoRA) -> Any:
    """peft's ``LoraConfig`` for a causal LM with these adapter settings."""
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def marks_assistant_turns(trl: Any, tokenizer: Any) -> bool:
    """Whether trl can mask all but the assistant turns with this chat template (its own, or one trl patches)."""
    utils: Any = importlib.import_module("trl.chat_template_utils")
    if utils.has_generation_markers(tokenizer.chat_template or ""):
        return True
    try:
        return utils.get_training_chat_template(tokenizer) is not None
    except Exception:  # a template trl does not know: train on the whole conversation
        return False


def _callback(transformers: Any, handoff: Handoff) -> Any:
    """A TrainerCallback handing each log line and each saved checkpoint to the job, and stopping on cancel."""

    class ToJob(transformers.TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:  # the final summary and evaluations are in the result
                return
            event = {"step": int(state.global_step), "total": int(state.max_steps)}
            event.update({k: logs[k] for k in ("loss", "learning_rate", "epoch", "grad_norm") if k in logs})
            handoff.post("log", event)  # the trainer goes on; a checkpoint waits for it

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            handoff.hand("saved", int(state.global_step))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if handoff.stopping:
                control.should_training_stop = True

    return ToJob()
