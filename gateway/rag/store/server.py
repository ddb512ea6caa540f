"""The server backend: a Qdrant server (or cluster) by ``rag.store.url``, through qdrant-client's async client.

The data model is the embedded backend's (:mod:`gateway.rag.store.base`): Qdrant collections
``NAME__chunks`` and ``NAME__manifests`` per Turnout collection, ``tenant`` indexed as a keyword with
``is_tenant`` (the server keeps each tenant's points together and plans a tenant's search on them) and
``doc_id`` as a keyword, and a search filtered to the caller's tenant or the shared documents. The server
builds its own HNSW in the background, so nothing here blocks on indexing.

The same calls run against qdrant-client's in-memory local mode (``AsyncQdrantClient(location=":memory:")``),
which is how the tests exercise this backend where no server binary is available: there, payload indexes
are accepted and ignored, and filters run in Python.

May import: ``qdrant_client``, ``gateway.config`` and :mod:`gateway.rag.store.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from gateway.config.model import RagStoreConfig
from gateway.rag.store.base import Kind, Point, StoredChunk, VectorStore, Where

_FACET_LIMIT = 1_000_000  # tenants listed at most per collection


def _filter(where: Where) -> models.Filter:
    tenants: list[models.Condition] = [
        models.FieldCondition(key="tenant", match=models.MatchValue(value=k)) for k in where.tenants
    ]
    must: list[models.Condition] = []
    if where.doc_id is not None:
        must.append(models.FieldCondition(key="doc_id", match=models.MatchValue(value=where.doc_id)))
    if len(tenants) == 1:
        return models.Filter(must=[*tenants, *must])
    return models.Filter(should=tenants, must=must or None)


class ServerStore(VectorStore):
    def __init__(self, client: AsyncQdrantClient, dimension: int | None = None, sizes: dict[str, int] | None = None):
        super().__init__(dimension)
        self.client = client
        self._sizes = {} if sizes is None else sizes  # collections seen to exist: spares a round trip per search

    @classmethod
    def connect(cls, config: RagStoreConfig, dimension: int | None = None) -> ServerStore:
        """A client for the server at ``rag.store.url`` (it connects on the first call)."""
        key = config.api_key.get_secret_value() if config.api_key else None
        return cls(AsyncQdrantClient(url=str(config.url), api_key=key), dimension)

    def sized(self, dimension: int) -> ServerStore:
        return ServerStore(self.client, dimension, self._sizes)

    async def close(self) -> None:
        await self.client.close()

    async def flush(self) -> None:
        """Nothing to do: every write waited for the server to apply it (``wait=True``)."""

    async def _collections(self) -> list[str]:
        suffix = "__" + Kind.MANIFESTS.value
        names = {c.name for c in (await self.client.get_collections()).collections}
        owners = (n.removesuffix(suffix) for n in names if n.endswith(suffix))
        return sorted(owner for owner in owners if Kind.CHUNKS.container(owner) in names)

    async def _vector_size(self, collection: str) -> int | None:
        if collection in self._sizes:
            return self._sizes[collection]
        name = Kind.CHUNKS.container(collection)
        if not await self.client.collection_exists(name):
            return None
        vectors = (await self.client.get_collection(name)).config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            return None  # not one of ours: named vectors
        self._sizes[collection] = vectors.size
        return vectors.size

    async def _create(self, collection: str, dimension: int) -> None:
        for kind, params in (
            (Kind.CHUNKS, models.VectorParams(size=dimension, distance=models.Distance.COSINE)),
            (Kind.MANIFESTS, models.VectorParams(size=1, distance=models.Distance.DOT)),
        ):
            name = kind.container(collection)
            if not await self.client.collection_exists(name):
                try:
                    await self.client.create_collection(name, vectors_config=params)
                except Exception:
                    if not await self.client.collection_exists(name):
                        raise  # not another gateway replica creating it at the same moment
            tenant = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
            await self.client.create_payload_index(name, "tenant", field_schema=tenant, wait=True)
            await self.client.create_payload_index(name, "doc_id", field_schema=models.PayloadSchemaType.KEYWORD)
        self._sizes[collection] = dimension

    async def _drop(self, collection: str) -> None:
        self._sizes.pop(collection, None)
        for kind in Kind:
            await self.client.delete_collection(kind.container(collection))

    async def _upsert(self, kind: Kind, collection: str, points: Sequence[Point]) -> None:
        batch = [models.PointStruct(id=p.id, vector=list(p.vector), payload=p.payload) for p in points]
        await self.client.upsert(kind.container(collection), points=batch, wait=True)

    async def _delete(self, kind: Kind, collection: str, ids: Sequence[str]) -> None:
        selector = models.PointIdsList(points=list(ids))
        await self.client.delete(kind.container(collection), points_selector=selector, wait=True)

    async def _delete_where(self, kind: Kind, collection: str, where: Where) -> None:
        selector = models.FilterSelector(filter=_filter(where))
        await self.client.delete(kind.container(collection), points_selector=selector, wait=True)

    async def _retrieve(self, kind: Kind, collection: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        records = await self.client.retrieve(kind.container(collection), ids=list(ids), with_payload=True)
        return [dict(r.payload or {}) for r in records]

    async def _scroll(
        self, kind: Kind, collection: str, where: Where, offset: Any, limit: int
    ) -> tuple[list[dict[str, Any]], Any]:
        records, following = await self.client.scroll(
            kind.container(collection), scroll_filter=_filter(where), limit=limit, offset=offset, with_payload=True
        )
        return [dict(r.payload or {}) for r in records], following

    async def _count(self, kind: Kind, collection: str, where: Where | None) -> int:
        flt = None if where is None else _filter(where)
        return (await self.client.count(kind.container(collection), count_filter=flt, exact=True)).count

    async def _tenant_keys(self, collection: str) -> list[str]:
        found = await self.client.facet(
            Kind.MANIFESTS.container(collection), key="tenant", limit=_FACET_LIMIT, exact=True
        )
        return [str(hit.value) for hit in found.hits if hit.count > 0]

    async def _query(self, collection: str, where: Where, vector: Sequence[float], limit: int) -> list[StoredChunk]:
        found = await self.client.query_points(
            Kind.CHUNKS.container(collection),
            query=list(vector),
            query_filter=_filter(where),
            limit=limit,
            with_payload=True,
        )
        return [StoredChunk(str(p.id), float(p.score), dict(p.payload or {})) for p in found.points]
