"""Retrieval-augmented generation: documents, chunks, the vector store, retrieval and citations.

The package itself stays light (the vector store's engines are imported by :mod:`gateway.rag.store` only,
and only the configured one). Answering from retrieval is a backend of the completion service:
:mod:`gateway.dispatch.rag_backend`.

May import: ``gateway.config``, ``gateway.embeddings`` (and what they import).
"""

SHARED = ""  # the tenant of documents every caller may read
