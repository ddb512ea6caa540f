"""Retrieval-augmented generation: documents, chunks, the vector store, retrieval and citations."""
