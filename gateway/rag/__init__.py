"""Retrieval-augmented generation: documents, chunks, the vector store, retrieval and citations.

The package itself stays light (the vector store client is imported by its own module only)."""

SHARED = ""  # the tenant of documents every caller may read
