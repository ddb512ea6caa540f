"""The store's data model and its operations, written once over a few primitives each backend provides.

Layout, the same on both backends: a Turnout collection is two Qdrant containers (an edge shard, or a
server collection), ``NAME__chunks`` with the chunk vectors and ``NAME__manifests`` with one 1-d point per
document (its content hash and chunk count), so re-ingesting an unchanged document is a lookup and
deleting or replacing one touches exactly its chunks. Every point carries ``tenant`` (a keyword index
with ``is_tenant``) and ``doc_id`` (a keyword index), which the store writes itself. A tenant's partition
is its points; a search is one query filtered to the caller's tenant or the shared documents.

The shared documents carry the reserved value :data:`SHARED_KEY`, which no tenant can take: tenant names
at the gateway are ``NAME_PATTERN`` names (no parentheses), and the store refuses that exact name here
too, so writing "as" the shared documents is never possible by naming a tenant. Point ids are derived from
(tenant, document id, position), so two tenants' documents of the same id never collide.

The vector size matters only to create a collection: a store opened without one lists, searches and
deletes (``turnout rag list`` and ``rag delete`` open it so, without loading the embedding model), and one
given the model's size refuses to write into a collection built with vectors of another size (until every
tenant's documents are deleted from it).

May import: ``gateway.config`` and ``gateway.rag`` (its ``SHARED``): no engine.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from gateway.rag import SHARED

if TYPE_CHECKING:
    from gateway.config.model import RagStoreConfig

SHARED_KEY = "(shared)"  # the stored tenant value of the shared documents (outside every tenant name)
BLOCK = 1000  # points per write call at most: about 16 ms of the embedded engine holding the event loop
_NAMESPACE = uuid.UUID("6f1f5b0e-3c55-4e07-9a4e-2b1c9d7f0a11")
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")  # as rag.collections names are checked


class StoreError(Exception):
    """The vector store cannot be opened or used."""


class StoreLocked(StoreError):
    """Embedded storage is open in another process (a running gateway)."""


class Kind(Enum):
    """The two containers of a collection."""

    CHUNKS = "chunks"
    MANIFESTS = "manifests"

    def container(self, collection: str) -> str:
        return f"{collection}__{self.value}"


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


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document's new chunks (vectors and payloads, in order) and manifest, and how many it had before."""

    doc_id: str
    vectors: Sequence[Sequence[float]]
    payloads: Sequence[dict[str, Any]]
    manifest: dict[str, Any]
    previous_chunks: int = 0


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    vector: Sequence[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Where:
    """Points of any of ``tenants`` (stored keys, never empty), and of one document if ``doc_id`` is set."""

    tenants: tuple[str, ...]
    doc_id: str | None = None

    def __post_init__(self) -> None:
        assert self.tenants, "a filter always names a tenant: nothing is ever read across all of them"


def tenant_key(tenant: str) -> str:
    """The stored ``tenant`` value of a tenant's points (the shared documents' is :data:`SHARED_KEY`)."""
    if tenant == SHARED:
        return SHARED_KEY
    if tenant == SHARED_KEY:
        raise StoreError(f"{SHARED_KEY!r} cannot name a tenant: the store keeps the shared documents under it")
    return tenant


def tenant_of(key: str) -> str:
    return SHARED if key == SHARED_KEY else key


def check_collection(name: str) -> str:
    if not _COLLECTION.fullmatch(name):
        raise StoreError(f"{name!r} is not a collection name: use 1-63 letters, digits or '-'")
    return name


def chunk_id(tenant: str, doc_id: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, json.dumps(["chunk", tenant, doc_id, index])))


def manifest_id(tenant: str, doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, json.dumps(["manifest", tenant, doc_id])))


def manifest_point(tenant: str, doc_id: str, payload: dict[str, Any]) -> Point:
    return Point(manifest_id(tenant, doc_id), [1.0], {**payload, "tenant": tenant_key(tenant), "doc_id": doc_id})


def chunk_point(tenant: str, doc_id: str, index: int, vector: Sequence[float], payload: dict[str, Any]) -> Point:
    return Point(chunk_id(tenant, doc_id, index), vector, {**payload, "tenant": tenant_key(tenant), "doc_id": doc_id})


def blocks(items: Sequence[Any], size: int = BLOCK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _readable(payload: dict[str, Any] | None) -> dict[str, Any]:
    """A stored payload as callers know it: the tenant's own name ("" for the shared documents)."""
    out = dict(payload or {})
    if isinstance(out.get("tenant"), str):
        out["tenant"] = tenant_of(out["tenant"])
    return out


def _manifest(payload: dict[str, Any]) -> Manifest:
    readable = _readable(payload)
    return Manifest(
        str(readable.get("doc_id")), str(readable.get("content_hash", "")), int(readable.get("chunks", 0)), readable
    )


class VectorStore(ABC):
    """Chunks and manifests of every collection, partitioned by tenant; see the module docstring.

    Backends implement the ``_``-prefixed primitives, each one call to the engine: every public method
    (the data model, the order of writes) is written here once, for both.
    """

    def __init__(self, dimension: int | None) -> None:
        self.dimension = dimension  # of the embedding model; None: this store creates no collection

    @classmethod
    def open(cls, config: RagStoreConfig, dimension: int | None = None) -> VectorStore:
        """The configured backend, opened (fast: no model involved); :class:`StoreLocked` when another process
        holds the embedded store. Without ``dimension`` it reads and deletes but creates nothing."""
        from gateway.rag.store import open_store  # the package picks the backend (and imports only its engine)

        return open_store(config, dimension)

    # -- what a backend provides ---------------------------------------------------------------------

    @abstractmethod
    def sized(self, dimension: int) -> VectorStore:
        """This store (the same engine) for writing vectors of ``dimension``, known once the model is loaded."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def flush(self) -> None:
        """Make what was written durable and quick to reopen (after an ingestion job)."""

    @abstractmethod
    async def _collections(self) -> list[str]:
        """Every collection that has containers."""

    @abstractmethod
    async def _vector_size(self, collection: str) -> int | None:
        """The chunk vectors' size, or None when the collection has no containers."""

    @abstractmethod
    async def _create(self, collection: str, dimension: int) -> None:
        """Both containers, with the ``tenant`` (``is_tenant``) and ``doc_id`` keyword indexes."""

    @abstractmethod
    async def _drop(self, collection: str) -> None: ...

    @abstractmethod
    async def _upsert(self, kind: Kind, collection: str, points: Sequence[Point]) -> None:
        """One write of at most :data:`BLOCK` points."""

    @abstractmethod
    async def _delete(self, kind: Kind, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    async def _delete_where(self, kind: Kind, collection: str, where: Where) -> None: ...

    @abstractmethod
    async def _retrieve(self, kind: Kind, collection: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The payloads of those of ``ids`` that exist."""

    @abstractmethod
    async def _scroll(
        self, kind: Kind, collection: str, where: Where, offset: Any, limit: int
    ) -> tuple[list[dict[str, Any]], Any]:
        """A page of payloads, and the offset of the next page (None after the last)."""

    @abstractmethod
    async def _count(self, kind: Kind, collection: str, where: Where | None) -> int: ...

    @abstractmethod
    async def _tenant_keys(self, collection: str) -> list[str]:
        """The stored tenant values that have manifests (a facet; values whose points were all deleted left out)."""

    @abstractmethod
    async def _query(self, collection: str, where: Where, vector: Sequence[float], limit: int) -> list[StoredChunk]: ...

    # -- the store's operations ----------------------------------------------------------------------

    async def partitions(self, collection: str | None = None) -> list[tuple[str, str]]:
        """(collection, tenant) of every partition that holds documents, optionally of one collection."""
        names = [collection] if collection is not None else await self._collections()
        found = []
        for name in names:
            if await self._vector_size(name) is not None:
                found += [(name, tenant_of(key)) for key in await self._tenant_keys(name)]
        return sorted(found)

    async def ensure_partition(self, collection: str, tenant: str) -> None:
        """Create the collection if it is missing; refuse one whose vectors are not of this store's size."""
        if self.dimension is None:
            raise StoreError("the vector store was opened without a vector size: it can read and delete, not write")
        tenant_key(tenant)
        size = await self._vector_size(check_collection(collection))
        if size == self.dimension:
            return
        if size is not None:
            if await self._count(Kind.CHUNKS, collection, None) or await self._count(Kind.MANIFESTS, collection, None):
                raise StoreError(
                    f"collection {collection} holds vectors of {size} dimensions but the embedding model makes "
                    f"{self.dimension}: it was built with another model; delete its documents (turnout rag delete, "
                    "for every tenant) and ingest again, or configure the model that built it"
                )
            await self._drop(collection)  # empty: rebuilt for this model
        await self._create(collection, self.dimension)

    async def manifest(self, collection: str, tenant: str, doc_id: str) -> Manifest | None:
        return (await self.lookup(collection, tenant, [doc_id])).get(doc_id)

    async def lookup(self, collection: str, tenant: str, doc_ids: Sequence[str]) -> dict[str, Manifest]:
        """The manifests of those of ``doc_ids`` that are stored, by document id (one read per block)."""
        if not doc_ids or await self._vector_size(collection) is None:
            return {}
        found: dict[str, Manifest] = {}
        for block in blocks([manifest_id(tenant, doc_id) for doc_id in doc_ids]):
            for payload in await self._retrieve(Kind.MANIFESTS, collection, block):
                manifest = _manifest(payload)
                found[manifest.doc_id] = manifest
        return found

    async def manifests(self, collection: str, tenant: str, limit: int = 1_000_000) -> list[Manifest]:
        if await self._vector_size(collection) is None:
            return []
        where = Where((tenant_key(tenant),))
        payloads: list[dict[str, Any]] = []
        offset: Any = None
        while len(payloads) < limit:
            page, offset = await self._scroll(
                Kind.MANIFESTS, collection, where, offset, min(BLOCK, limit - len(payloads))
            )
            payloads += page
            if offset is None:
                break
        return sorted((_manifest(p) for p in payloads), key=lambda m: m.doc_id)

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
        await self.write_documents(
            collection, tenant, [DocumentWrite(doc_id, vectors, payloads, manifest, previous_chunks)]
        )

    async def write_documents(self, collection: str, tenant: str, documents: Sequence[DocumentWrite]) -> None:
        """Write documents' chunks, drop the ones shorter new versions no longer have, then their manifests.

        Each step is one write per block of points for all the documents together. The final manifests are
        written last: if this is interrupted, the documents still look changed (or new), so running the
        ingestion again finishes the job instead of skipping it.
        """
        if await self._vector_size(collection) is None:
            raise StoreError(f"collection {collection} does not exist in the vector store: ensure_partition first")
        # First manifests that cover every chunk id about to exist, with no content hash: if this is
        # interrupted, the next run sees a change and replaces, and a delete still finds every chunk.
        provisional = [
            manifest_point(tenant, d.doc_id, {**d.manifest, "content_hash": "", "chunks": len(d.vectors)})
            for d in documents
            if len(d.vectors) > d.previous_chunks
        ]
        chunks = [
            chunk_point(tenant, d.doc_id, i, vector, payload)
            for d in documents
            for i, (vector, payload) in enumerate(zip(d.vectors, d.payloads, strict=True))
        ]
        stale = [chunk_id(tenant, d.doc_id, i) for d in documents for i in range(len(d.vectors), d.previous_chunks)]
        final = [manifest_point(tenant, d.doc_id, d.manifest) for d in documents]
        for block in blocks(provisional):
            await self._upsert(Kind.MANIFESTS, collection, block)
        for block in blocks(chunks):
            await self._upsert(Kind.CHUNKS, collection, block)
        for block in blocks(stale):
            await self._delete(Kind.CHUNKS, collection, block)
        for block in blocks(final):
            await self._upsert(Kind.MANIFESTS, collection, block)

    async def delete_document(self, collection: str, tenant: str, doc_id: str) -> bool:
        if await self.manifest(collection, tenant, doc_id) is None:
            return False
        await self._delete_where(Kind.CHUNKS, collection, Where((tenant_key(tenant),), doc_id))
        await self._delete(Kind.MANIFESTS, collection, [manifest_id(tenant, doc_id)])
        return True

    async def drop_partition(self, collection: str, tenant: str) -> bool:
        """Delete a tenant's documents of a collection; False when it had none."""
        if await self._vector_size(collection) is None:
            return False
        where = Where((tenant_key(tenant),))
        existed = False
        for kind in (Kind.CHUNKS, Kind.MANIFESTS):
            if await self._count(kind, collection, where):
                existed = True
                await self._delete_where(kind, collection, where)
        return existed

    async def count(self, collection: str, tenant: str) -> int:
        if await self._vector_size(collection) is None:
            return 0
        return await self._count(Kind.CHUNKS, collection, Where((tenant_key(tenant),)))

    async def search(
        self, collection: str, tenants: Sequence[str], vector: Sequence[float], limit: int
    ) -> list[StoredChunk]:
        """The best ``limit`` chunks of the given tenants (one query over their partitions together)."""
        keys = tuple(dict.fromkeys(tenant_key(t) for t in tenants))
        if not keys or await self._vector_size(collection) is None:
            return []
        found = await self._query(collection, Where(keys), vector, limit)
        return [StoredChunk(hit.id, hit.score, _readable(hit.payload)) for hit in found]
