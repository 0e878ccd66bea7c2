"""The light pool: LLM inference (transformers on CPU/GPU, vLLM on GPU) behind OpenAI-compatible routes.

``workers.light:Light`` is the worker class for pools.yaml; ``build_tiny_model``
makes the offline default model. torch and transformers are imported only when
a worker starts, so this package imports without them.
"""

from orchestrator.models.tiny import build_tiny_model
from workers.light.worker import Light

__all__ = ["Light", "build_tiny_model"]
