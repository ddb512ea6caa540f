"""The vector store: one interface (:class:`VectorStore`), embedded on disk by default or a Qdrant server by URL.

- :mod:`.base`: the data model (a collection's chunks and manifests, partitioned by a ``tenant`` payload
  with an ``is_tenant`` index, the shared documents under a reserved value) and every operation, written
  once over a few primitives;
- :mod:`.edge`: ``rag.store.path`` (the default), Qdrant's engine in-process through qdrant-edge;
- :mod:`.server`: ``rag.store.url``, a Qdrant server through qdrant-client's async client;
- :mod:`.legacy`: reading a store written by earlier versions (qdrant-client's local mode), which the
  embedded backend moves to the current layout when it opens one.

Each backend's engine is imported only when it is opened.

May import: ``gateway.config``, ``gateway.rag`` (its ``SHARED``), ``qdrant_client``, ``qdrant_edge``.
"""

from __future__ import annotations

from gateway.config.model import RagStoreConfig
from gateway.rag.store.base import (
    SHARED_KEY,
    DocumentWrite,
    Manifest,
    StoredChunk,
    StoreError,
    StoreLocked,
    VectorStore,
    chunk_id,
    manifest_id,
)


def open_store(config: RagStoreConfig, dimension: int | None = None) -> VectorStore:
    """What :meth:`VectorStore.open` opens: the server at ``url`` if one is set, else the embedded store."""
    if config.url is not None:
        from gateway.rag.store.server import ServerStore

        return ServerStore.connect(config, dimension)
    from gateway.rag.store.edge import EdgeStore

    return EdgeStore.open_path(config.path, dimension)


__all__ = [
    "SHARED_KEY",
    "DocumentWrite",
    "Manifest",
    "StoreError",
    "StoreLocked",
    "StoredChunk",
    "VectorStore",
    "chunk_id",
    "manifest_id",
    "open_store",
]
