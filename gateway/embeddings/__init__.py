"""Sentence embeddings: the model, loaded once (:mod:`.embedder`), and the queue that batches its runs
(:mod:`.batching`).

May import: ``gateway.config``, ``gateway.protocol``.
"""

from gateway.embeddings.embedder import MAX_EMBED_CHARS, Embedder, EmbedderError, Vector, model_location

__all__ = ["MAX_EMBED_CHARS", "Embedder", "EmbedderError", "Vector", "model_location"]
