"""A tiny random Llama-style model with a real tokenizer and chat template, built locally (no download).

It makes the light pool work on a machine with no network: the default
``pools.yaml`` serves it when no model is configured. Its weights are random,
so its text is gibberish, but every code path (chat template, batching,
sampling, stop strings, streaming, LoRA) runs exactly as with a real model.

    orchestrator models tiny --out /tmp/tiny      # or: python -m orchestrator.models.tiny --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_NAME = "tiny"
MARKER = "tiny-model-v3.json"  # written last: its presence means the folder is complete (v3: generation markers)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML, as Qwen and many instruct models use it, with trl's {% generation %} markers on assistant turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"  # generation markers: trl trains on the assistant turns only
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray actors run Python workers in pools, supervised like OTP processes.",
    "A language model predicts the next token from the tokens before it.",
    "Question: What is the capital of France? Answer: Paris.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.",
    "Hello, world! How are you today? I am fine, thank you.",
    "user assistant system tool function message content role",
]


def default_tiny_dir() -> Path:
    """Where the light worker builds the tiny model when no model is configured."""
    base = os.environ.get("ORCHESTRATOR_CACHE") or str(Path.home() / ".cache" / "orchestrator")
    return Path(base) / "models" / TINY_NAME


def is_built(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a complete tiny model."""
    return (Path(out_dir) / MARKER).is_file()


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 512,
    context: int = 16384,  # random weights and rotary positions: a long context costs nothing
    seed: int = 0,
) -> Path:
    """Build (once) a random Llama model, its byte-level BPE tokenizer and a ChatML template into ``out_dir``.

    Idempotent and safe to race: the model is written to a temporary folder
    beside ``out_dir`` and moved into place, so concurrent builders (two
    actors starting at once) never see a half-written folder. Returns ``out_dir``.
    """
    out = Path(out_dir).expanduser().resolve()
    if is_built(out):
        return out
    # Imported untyped: the package imports (and type-checks) without torch and transformers installed.
    torch: Any = importlib.import_module("torch")
    tk: Any = importlib.import_module("tokenizers")
    tf: Any = importlib.import_module("transformers")
    Tokenizer, decoders, models, pre_tokenizers, trainers = (
        tk.Tokenizer,
        tk.decoders,
        tk.models,
        tk.pre_tokenizers,
        tk.trainers,
    )
    GenerationConfig, LlamaConfig, LlamaForCausalLM = tf.GenerationConfig, tf.LlamaConfig, tf.LlamaForCausalLM
    PreTrainedTokenizerFast = tf.PreTrainedTokenizerFast

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            eos_token="<|im_end|>",
            pad_token="<|pad|>",
            bos_token=None,
            unk_token=None,
            additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
            model_max_length=context,
            padding_side="left",
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(staging)

        eos = fast.convert_tokens_to_ids("<|im_end|>")
        pad = fast.convert_tokens_to_ids("<|pad|>")
        config = LlamaConfig(
            vocab_size=len(fast),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=context,
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=True,
            initializer_range=0.5,  # larger than usual: sharper (less uniform) random next-token logits
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
        model.save_pretrained(staging)
        info: dict[str, Any] = {"name": TINY_NAME, "hidden_size": hidden_size, "layers": layers, "context": context}
        (staging / MARKER).write_text(json.dumps(info) + "\n")
        try:
            staging.rename(out)
        except OSError:  # someone else finished first (or out exists half-made from an older crash)
            if not is_built(out):
                shutil.rmtree(out, ignore_errors=True)
                staging.rename(out)
    finally:
        with contextlib.suppress(OSError):
            if staging.exists():
                shutil.rmtree(staging)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.models.tiny --out DIR``: build the tiny model and print its folder."""
    parser = argparse.ArgumentParser(description="Build a tiny random Llama-style chat model locally (no download).")
    parser.add_argument("--out", type=Path, default=None, help=f"target folder (default: {default_tiny_dir()})")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (64: tiny; 512: a bench model)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out or default_tiny_dir(), hidden_size=args.hidden_size, layers=args.layers)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
