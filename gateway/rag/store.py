"""The vector store: Qdrant through qdrant-client, embedded on disk by default or a server by URL.

One code path serves both. Each (collection, tenant) pair is its own Qdrant collection, a *partition*:
a tenant's search never even looks at another tenant's chunks (stronger than a payload filter, and
fast in embedded mode, where filters run point by point). Shared documents (ingested without a tenant)
live in the collection's shared partition, which every caller's search includes.

Every partition has a manifest beside it, one point per document (its content hash and chunk count),
so re-ingesting an unchanged document is a lookup, and deleting or replacing one touches exactly its
chunks, whose ids are derived from the document id and position.

The vector size matters only to create a partition: a store opened without one lists, searches and
deletes (``turnout rag list`` and ``rag delete`` open it so, without loading the embedding model), and one
given the model's size refuses to write into a partition built with vectors of another size.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from gateway.config.model import RagStoreConfig
from gateway.rag import SHARED

_MANIFEST_SUFFIX = "__manifest"
_SEP = "__t_"
_SHARED_SUFFIX = "__shared"
_NAMESPACE = uuid.UUID("6f1f5b0e-3c55-4e07-9a4e-2b1c9d7f0a11")


class StoreError(Exception):
    """The vector store cannot be opened or used."""


class StoreLocked(StoreError):
    """Embedded storage is open in another process (a running gateway)."""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Manifest:
    doc_id: str
    content_hash: str
    chunks: int
    payload: dict[str, Any]


def partition_name(collection: str, tenant: str) -> str:
    """The Qdrant collection holding one tenant's (or the shared) chunks of a collection.

    Every character of a tenant name outside [A-Za-z0-9-] is escaped to a fixed width, so the mapping
    is one-to-one and reversible, and an escaped name never contains "__" (which separates parts)."""
    safe = re.sub(r"[^A-Za-z0-9-]", lambda m: f"~{ord(m.group()):06x}", tenant)
    return f"{collection}{_SEP}{safe}" if tenant else f"{collection}{_SHARED_SUFFIX}"


def chunk_id(doc_id: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}\0{index}"))


def manifest_id(doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}\0manifest"))


class VectorStore:
    def __init__(self, client: AsyncQdrantClient, dimension: int | None = None) -> None:
        self.client = client
        self.dimension = dimension  # of the embedding model; None: this store creates no partition
        self._known: set[str] = set()  # partitions seen to exist: spares a round trip per search
        self._sized: set[str] = set()  # partitions whose vector size is known to be ``dimension``

    def sized(self, dimension: int) -> VectorStore:
        """This store (the same client) for writing vectors of ``dimension``, known once the model is loaded."""
        return VectorStore(self.client, dimension)

    async def _exists(self, name: str) -> bool:
        if name in self._known:
            return True
        if await self.client.collection_exists(name):
            self._known.add(name)
            return True
        return False

    @classmethod
    def open(cls, config: RagStoreConfig, dimension: int | None = None) -> VectorStore:
        """Open the store (fast: no model involved); :class:`StoreLocked` when another process holds it."""
        try:
            if config.url is not None:
                key = config.api_key.get_secret_value() if config.api_key else None
                client = AsyncQdrantClient(url=config.url, api_key=key)
            else:
                config.path.mkdir(parents=True, exist_ok=True)
                client = AsyncQdrantClient(path=str(config.path))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreLocked(
                    f"the vector store at {config.path} is open in another process (a running gateway?); "
                    "ingest through the gateway's API, or stop it first"
                ) from exc
            raise StoreError(f"cannot open the vector store: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the vector store at {config.path}: {exc.strerror or exc}") from exc
        return cls(client, dimension)

    async def close(self) -> None:
        await self.client.close()

    async def partitions(self, collection: str | None = None) -> list[tuple[str, str]]:
        """(collection, tenant) of every partition, optionally of one collection."""
        names = [c.name for c in (await self.client.get_collections()).collections]
        found = []
        for name in names:
            if name.endswith(_MANIFEST_SUFFIX):
                continue
            if name.endswith(_SHARED_SUFFIX):
                owner, tenant = name[: -len(_SHARED_SUFFIX)], SHARED
            elif _SEP in name:
                owner, _, escaped = name.partition(_SEP)
                tenant = re.sub(r"~([0-9a-f]{6})", lambda m: chr(int(m[1], 16)), escaped)
            else:
                continue
            if collection is None or owner == collection:
                found.append((owner, tenant))
        return sorted(found)

    async def ensure_partition(self, collection: str, tenant: str) -> None:
        """Create the partition if it is missing; refuse one whose vectors are not of this store's size."""
        if self.dimension is None:
            raise StoreError("the vector store was opened without a vector size: it can read and delete, not write")
        name = partition_name(collection, tenant)
        if name not in self._sized:
            if await self._exists(name):
                await self._check_size(name, self.dimension)
            else:
                params = models.VectorParams(size=self.dimension, distance=models.Distance.COSINE)
                await self.client.create_collection(name, vectors_config=params)
            self._sized.add(name)
        if not await self.client.collection_exists(name + _MANIFEST_SUFFIX):
            params = models.VectorParams(size=1, distance=models.Distance.DOT)
            await self.client.create_collection(name + _MANIFEST_SUFFIX, vectors_config=params)

    async def _check_size(self, name: str, dimension: int) -> None:
        vectors = (await self.client.get_collection(name)).config.params.vectors
        size = vectors.size if isinstance(vectors, models.VectorParams) else None
        if size != dimension:
            raise StoreError(
                f"partition {name} holds vectors of {size} dimensions but the embedding model makes {dimension}: "
                "it was built with another model; delete it (turnout rag delete) and ingest again, or configure "
                "the model that built it"
            )

    async def manifest(self, collection: str, tenant: str, doc_id: str) -> Manifest | None:
        name = partition_name(collection, tenant) + _MANIFEST_SUFFIX
        if not await self.client.collection_exists(name):
            return None
        records = await self.client.retrieve(name, ids=[manifest_id(doc_id)], with_payload=True)
        if not records:
            return None
        payload = dict(records[0].payload or {})
        return Manifest(doc_id, str(payload.get("content_hash", "")), int(payload.get("chunks", 0)), payload)

    async def manifests(self, collection: str, tenant: str, limit: int = 1_000_000) -> list[Manifest]:
        name = partition_name(collection, tenant) + _MANIFEST_SUFFIX
        if not await self.client.collection_exists(name):
            return []
        records: list[Any] = []
        offset: Any = None
        while len(records) < limit:
            page, offset = await self.client.scroll(
                name, limit=min(1000, limit - len(records)), offset=offset, with_payload=True
            )
            records += page
            if offset is None:
                break
        out = []
        for record in records:
            payload = dict(record.payload or {})
            out.append(
                Manifest(
                    str(payload.get("doc_id")),
                    str(payload.get("content_hash", "")),
                    int(payload.get("chunks", 0)),
                    payload,
                )
            )
        return sorted(out, key=lambda m: m.doc_id)

    async def write_document(
        self,
        collection: str,
        tenant: str,
        doc_id: str,
        vectors: Sequence[Sequence[float]],
        payloads: Sequence[dict[str, Any]],
        manifest: dict[str, Any],
        previous_chunks: int,
    ) -> None:
        """Write a document's chunks, drop the ones a shorter new version no longer has, then its manifest.

        The final manifest is written last: if this is interrupted, the document still looks changed (or
        new), so running the ingestion again finishes the job instead of skipping it.
        """
        name = partition_name(collection, tenant)
        points = [
            models.PointStruct(id=chunk_id(doc_id, i), vector=list(vector), payload=payload)
            for i, (vector, payload) in enumerate(zip(vectors, payloads, strict=True))
        ]
        if len(points) > previous_chunks:
            # First a manifest that covers every chunk id about to exist, with no content hash: if this is
            # interrupted, the next run sees a change and replaces, and a delete still finds every chunk.
            provisional = models.PointStruct(
                id=manifest_id(doc_id),
                vector=[1.0],
                payload={**manifest, "doc_id": doc_id, "content_hash": "", "chunks": len(points)},
            )
            await self.client.upsert(name + _MANIFEST_SUFFIX, points=[provisional], wait=True)
        if points:
            await self.client.upsert(name, points=points, wait=True)
        stale = [chunk_id(doc_id, i) for i in range(len(points), previous_chunks)]
        if stale:
            await self.client.delete(name, points_selector=models.PointIdsList(points=stale), wait=True)
        record = models.PointStruct(id=manifest_id(doc_id), vector=[1.0], payload={**manifest, "doc_id": doc_id})
        await self.client.upsert(name + _MANIFEST_SUFFIX, points=[record], wait=True)

    async def delete_document(self, collection: str, tenant: str, doc_id: str) -> bool:
        found = await self.manifest(collection, tenant, doc_id)
        if found is None:
            return False
        name = partition_name(collection, tenant)
        ids = [chunk_id(doc_id, i) for i in range(found.chunks)]
        if ids:
            await self.client.delete(name, points_selector=models.PointIdsList(points=ids), wait=True)
        await self.client.delete(
            name + _MANIFEST_SUFFIX, points_selector=models.PointIdsList(points=[manifest_id(doc_id)]), wait=True
        )
        return True

    async def drop_partition(self, collection: str, tenant: str) -> bool:
        name = partition_name(collection, tenant)
        existed = await self.client.collection_exists(name)
        self._known.discard(name)
        self._sized.discard(name)
        self._known.discard(name + _MANIFEST_SUFFIX)
        for each in (name, name + _MANIFEST_SUFFIX):
            if await self.client.collection_exists(each):
                await self.client.delete_collection(each)
        return existed

    async def count(self, collection: str, tenant: str) -> int:
        name = partition_name(collection, tenant)
        if not await self.client.collection_exists(name):
            return 0
        return (await self.client.count(name, exact=True)).count

    async def search(
        self, collection: str, tenants: Sequence[str], vector: Sequence[float], limit: int
    ) -> list[StoredChunk]:
        """The best ``limit`` chunks over the given partitions (missing partitions are empty)."""
        hits: list[StoredChunk] = []
        for tenant in dict.fromkeys(tenants):
            name = partition_name(collection, tenant)
            if not await self._exists(name):
                continue
            result = await self.client.query_points(name, query=list(vector), limit=limit, with_payload=True)
            hits += [StoredChunk(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:limit]
