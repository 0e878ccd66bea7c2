"""The heavy pool: DSPy prompt optimization (MIPROv2) as resumable jobs whose evaluations fan out to a light pool.

``workers.heavy:Heavy`` is the worker class for pools.yaml. It needs dspy and
optuna (``pip install -e ".[heavy]"``, or ``envs/heavy`` as its own env).
"""

from workers.heavy.worker import Heavy

__all__ = ["Heavy"]
