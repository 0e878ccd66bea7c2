"""The programs pool: registered versions of optimized DSPy programs, served (run, batch, stream, trace).

``workers.programs:Programs`` is the worker class for pools.yaml. It needs dspy
(``pip install -e ".[programs]"``, or ``envs/programs`` as its own env).
"""

from workers.programs.worker import Programs

__all__ = ["Programs"]
