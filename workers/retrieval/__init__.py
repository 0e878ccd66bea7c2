"""The retrieval pool: sentence embeddings and session-scoped vector search.

``Retrieval`` (the pool's worker) in ``worker.py``; the model and its pipelined
encoder in ``embedder.py``; the vector index (exact and FAISS) in ``index.py``.
"""

from workers.retrieval.worker import Retrieval

__all__ = ["Retrieval"]
