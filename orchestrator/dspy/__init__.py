"""DSPy on the pools: ``PoolLM`` is a ``dspy.BaseLM`` whose calls go to a pool's model over Ray.

    import dspy, orchestrator
    from orchestrator.dspy import PoolLM
    orch = orchestrator.connect()
    dspy.configure(lm=PoolLM("light/tiny", orch))        # inside an op: PoolLM("light/tiny", ctx.orchestrator)

Needs ``dspy`` (the ``heavy`` extra).
"""

from orchestrator.dspy.lm import PoolLM, lm_for

__all__ = ["PoolLM", "lm_for"]
