"""DSPy on the pools: ``PoolLM`` (a pool's model as a ``dspy.BaseLM``) and ``PoolRetriever`` (a retrieval-pool
corpus as a retriever, like ``dspy.retrievers.Embeddings``), each one Ray hop per call; and ``Provider``
(DSPy's ``lm.finetune`` through the gateway's Fine-tuning API).

    import dspy, orchestrator
    from orchestrator.dspy import PoolLM, PoolRetriever
    orch = orchestrator.connect()                        # or start(); inside an op there is ctx.orchestrator
    dspy.configure(lm=PoolLM("light/tiny"))              # no handle given: this process's own, at each call
    retrieve = PoolRetriever("docs", k=3)                # a corpus built with the retrieval pool's corpus_build
    retrieve("what do cats do?").passages

Needs ``dspy`` (the ``heavy`` extra).
"""

from orchestrator.dspy.lm import PoolLM, lm_for
from orchestrator.dspy.provider import Provider
from orchestrator.dspy.retriever import PoolRetriever

__all__ = ["PoolLM", "PoolRetriever", "Provider", "lm_for"]
