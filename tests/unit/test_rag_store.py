"""The vector store's data model, bookkeeping and tenant isolation, on both backends.

``embedded`` is the real engine (qdrant-edge) on disk in a temporary directory. ``server`` runs the server
backend's very qdrant-client calls against qdrant-client's in-memory local mode: no Qdrant server binary
is available here, and that mode answers the same calls (it ignores payload indexes and filters in Python,
which changes speed, not results).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from qdrant_client import AsyncQdrantClient

from gateway.config.model import ChunkingConfig, RagStoreConfig
from gateway.embeddings import Embedder
from gateway.rag import SHARED
from gateway.rag.documents import make_document
from gateway.rag.ingest import Ingestor
from gateway.rag.store import SHARED_KEY, DocumentWrite, StoreError, VectorStore
from gateway.rag.store.base import BLOCK, Kind, Point
from gateway.rag.store.server import ServerStore

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")


class Interrupted(Exception):
    """Stands for the process being stopped mid-write."""


class Backend:
    """Opens stores of one backend over the same data, as a gateway and later a CLI would."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.config = RagStoreConfig(path=root / "q")
        self.client = AsyncQdrantClient(location=":memory:") if kind == "server" else None

    def open(self, dimension: int | None = None) -> VectorStore:
        if self.client is not None:
            return ServerStore(self.client, dimension)
        return VectorStore.open(self.config, dimension)

    async def release(self, store: VectorStore) -> None:
        """Close a store (the in-memory server lives on until the test ends: it is the data)."""
        if self.client is None:
            await store.close()


@pytest.fixture(params=["embedded", "server"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    found = Backend(request.param, tmp_path)
    yield found
    if found.client is not None:
        await found.client.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[VectorStore]:
    opened = backend.open(dimension=4)
    yield opened
    await opened.close()


async def _put(store: VectorStore, tenant: str, doc_id: str, text: str, vector: Sequence[float] = (1, 0, 0, 0)) -> None:
    await store.ensure_partition("kb", tenant)
    manifest = {"content_hash": text, "title": doc_id}
    await store.write_document("kb", tenant, doc_id, [list(vector)], [{"text": text}], manifest, 0)


async def _texts(store: VectorStore, tenants: list[str]) -> list[str]:
    return sorted(h.payload["text"] for h in await store.search("kb", tenants, [1.0, 0, 0, 0], 50))


# Names a tenant could be given offline (the CLI's --tenant takes any text): like the shared documents'
# value, like the layout's own separators, quoted, with control characters, empty-looking.
ODD = ["shared", "_shared", "(shared", "shared)", "(Shared)", "*", " ", "__manifests", "x:y/z", "é", "\x0e9", "a\x00b"]


async def test_a_tenant_reads_its_own_chunks_and_the_shared_ones_only(store: VectorStore) -> None:
    await _put(store, SHARED, "s", "shared text")
    await _put(store, "acme", "a", "acme secret")
    await _put(store, "globex", "g", "globex secret")
    for tenant in ODD:
        await _put(store, tenant, "o", f"odd {tenant!r}")
    assert await _texts(store, ["acme", SHARED]) == ["acme secret", "shared text"]
    assert await _texts(store, [SHARED]) == ["shared text"]
    assert await _texts(store, ["nobody", SHARED]) == ["shared text"]
    assert await _texts(store, []) == []  # no tenant named: nothing, never everything
    for tenant in ODD:
        assert await _texts(store, [tenant, SHARED]) == sorted([f"odd {tenant!r}", "shared text"]), tenant
    listed = await store.partitions("kb")
    assert sorted(t for _, t in listed) == sorted([SHARED, "acme", "globex", *ODD])
    assert await store.count("kb", "acme") == 1
    assert [m.doc_id for m in await store.manifests("kb", "globex")] == ["g"]


async def test_the_shared_documents_value_cannot_name_a_tenant(store: VectorStore) -> None:
    await _put(store, SHARED, "s", "shared text")
    await _put(store, "acme", "a", "acme secret")
    with pytest.raises(StoreError, match="cannot name a tenant"):
        await _put(store, SHARED_KEY, "x", "written as if shared")
    with pytest.raises(StoreError, match="cannot name a tenant"):
        await store.search("kb", [SHARED_KEY], [1.0, 0, 0, 0], 5)
    with pytest.raises(StoreError, match="cannot name a tenant"):
        await store.drop_partition("kb", SHARED_KEY)
    assert await _texts(store, [SHARED]) == ["shared text"]
    [hit] = await store.search("kb", [SHARED], [1.0, 0, 0, 0], 5)
    assert hit.payload["tenant"] == SHARED  # callers see tenant names, not the stored value


async def test_documents_of_one_id_in_two_tenants_are_two_documents(store: VectorStore) -> None:
    await _put(store, SHARED, "same", "shared version")
    await _put(store, "acme", "same", "acme version")
    assert await _texts(store, ["acme"]) == ["acme version"]
    assert await store.delete_document("kb", "acme", "same")
    assert await _texts(store, ["acme", SHARED]) == ["shared version"]
    assert await store.manifest("kb", SHARED, "same") is not None
    assert not await store.delete_document("kb", "acme", "same")


async def test_dropping_a_partition_leaves_the_others(store: VectorStore) -> None:
    await _put(store, SHARED, "s", "shared text")
    await _put(store, "acme", "a", "acme secret")
    await _put(store, "acme", "b", "acme other")
    assert await store.drop_partition("kb", "acme")
    assert not await store.drop_partition("kb", "acme")
    assert not await store.drop_partition("nothing-here", "acme")
    assert await store.partitions() == [("kb", SHARED)]
    assert await store.count("kb", "acme") == 0
    assert await _texts(store, ["acme", SHARED]) == ["shared text"]


async def test_an_interrupted_write_leaves_nothing_a_delete_cannot_find(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.ensure_partition("kb", "t")
    vectors = [[1.0, float(i), 0, 0] for i in range(5)]
    payloads = [{"chunk": i} for i in range(5)]
    await store.write_document("kb", "t", "d", vectors[:2], payloads[:2], {"content_hash": "v1", "chunks": 2}, 0)
    # a longer version whose final manifest was never written (the run was interrupted)
    upsert = store._upsert

    async def fail_on_final_manifest(kind: Kind, collection: str, points: Sequence[Point]) -> None:
        if kind is Kind.MANIFESTS and points[0].payload.get("content_hash"):
            raise Interrupted
        await upsert(kind, collection, points)

    monkeypatch.setattr(store, "_upsert", fail_on_final_manifest)
    with pytest.raises(Interrupted):
        await store.write_document("kb", "t", "d", vectors, payloads, {"content_hash": "v2", "chunks": 5}, 2)
    monkeypatch.undo()
    manifest = await store.manifest("kb", "t", "d")
    assert manifest is not None
    assert manifest.content_hash == ""  # looks changed: the next run replaces it
    assert manifest.chunks == 5
    assert await store.count("kb", "t") == 5
    # a shorter version replaces it: the chunks it no longer has go
    await store.write_document("kb", "t", "d", vectors[:1], payloads[:1], {"content_hash": "v3"}, manifest.chunks)
    assert await store.count("kb", "t") == 1
    assert await store.delete_document("kb", "t", "d")
    assert await store.count("kb", "t") == 0


async def test_writes_go_in_blocks(store: VectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many documents' chunks share writes: a call per block of at most BLOCK points, never one per point."""
    calls: list[tuple[Kind, int]] = []
    upsert = store._upsert

    async def counted(kind: Kind, collection: str, points: Sequence[Point]) -> None:
        calls.append((kind, len(points)))
        await upsert(kind, collection, points)

    monkeypatch.setattr(store, "_upsert", counted)
    await store.ensure_partition("kb", "t")
    documents = [
        DocumentWrite(f"d{n}", [[1.0, float(i), 0, 0] for i in range(250)], [{"chunk": i} for i in range(250)], {})
        for n in range(10)
    ]
    await store.write_documents("kb", "t", documents)
    await store.flush()
    provisional = final = (Kind.MANIFESTS, 10)
    assert calls == [provisional, (Kind.CHUNKS, BLOCK), (Kind.CHUNKS, BLOCK), (Kind.CHUNKS, 500), final]
    assert await store.count("kb", "t") == 2500
    assert len(await store.lookup("kb", "t", [f"d{n}" for n in range(12)])) == 10


async def test_the_vector_size_matters_only_to_write(backend: Backend) -> None:
    """A store opened without a size (as ``turnout rag list`` and ``rag delete`` open it, without loading the
    model) reads and deletes; one given the model's size refuses a collection built with another size."""
    store = backend.open(dimension=4)
    await store.ensure_partition("kb", "t")
    await store.write_document("kb", "t", "d", [[1.0, 0, 0, 0]], [{"chunk": 0}], {"content_hash": "h"}, 0)
    await backend.release(store)
    reader = backend.open()
    try:
        assert [m.doc_id for m in await reader.manifests("kb", "t")] == ["d"]
        assert [h.payload["chunk"] for h in await reader.search("kb", ["t"], [1.0, 0, 0, 0], 3)] == [0]
        with pytest.raises(StoreError, match="opened without a vector size"):
            await reader.ensure_partition("kb", "t")
        with pytest.raises(StoreError, match=r"holds vectors of 4 dimensions but the embedding model makes 384"):
            await reader.sized(384).ensure_partition("kb", "other")
        await reader.sized(4).ensure_partition("kb", "t")  # the size that built it
        assert await reader.delete_document("kb", "t", "d")
        assert await reader.drop_partition("kb", "t") is False  # nothing left of it
        await reader.sized(384).ensure_partition("kb", "t")  # empty now: rebuilt for the new model
        assert await reader.sized(384).search("kb", ["t"], [1.0] * 384, 3) == []
    finally:
        await reader.close()


async def test_payloads_come_back_as_written(store: VectorStore) -> None:
    payload: dict[str, Any] = {"text": "é ☃", "url": None, "updated_at": "2026-01-02", "chunk": 0, "nested": {"a": [1]}}
    await store.ensure_partition("kb", "acme")
    await store.write_document("kb", "acme", "d", [[0.6, 0.8, 0, 0]], [payload], {"content_hash": "h"}, 0)
    [hit] = await store.search("kb", ["acme"], [0.6, 0.8, 0, 0], 3)
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    assert hit.payload == {**payload, "tenant": "acme", "doc_id": "d"}
    manifest = await store.manifest("kb", "acme", "d")
    assert manifest is not None
    assert manifest.payload == {"content_hash": "h", "tenant": "acme", "doc_id": "d"}


# -- ingestion writes in batches --------------------------------------------------------------------------


class WordEmbedder:
    """Stands in for the model: words are tokens, and a text's vector says how long it is."""

    max_tokens = 256

    def __init__(self) -> None:
        self.runs: list[int] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.runs.append(len(texts))
        # a text saying "wrong-size" gets a vector the store refuses
        return [[1.0, float(len(t)), 0.0] if "wrong-size" in t else [1.0, float(len(t)), 0.0, 0.0] for t in texts]


async def test_ingestion_embeds_and_writes_a_group_at_a_time(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[Kind, int]] = []
    reads: list[int] = []
    flushes: list[None] = []
    upsert, retrieve, flush = store._upsert, store._retrieve, store.flush

    async def counted_upsert(kind: Kind, collection: str, points: Sequence[Point]) -> None:
        writes.append((kind, len(points)))
        await upsert(kind, collection, points)

    async def counted_retrieve(kind: Kind, collection: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        reads.append(len(ids))
        return await retrieve(kind, collection, ids)

    async def counted_flush() -> None:
        flushes.append(None)
        await flush()

    monkeypatch.setattr(store, "_upsert", counted_upsert)
    monkeypatch.setattr(store, "_retrieve", counted_retrieve)
    monkeypatch.setattr(store, "flush", counted_flush)
    embedder = WordEmbedder()
    ingestor = Ingestor(store, cast(Embedder, embedder), ChunkingConfig(max_tokens=16, overlap_tokens=2))
    documents = [
        make_document(id=f"d{n}", text=f"Document number {n} says hello.", title="", source="s") for n in range(70)
    ]

    report = await ingestor.ingest("kb", "acme", documents)
    assert len(report.added) == 70
    assert embedder.runs == [32, 32, 6]  # one embedding call per group of documents
    assert reads == [32, 32, 6]  # one manifest lookup per group
    assert [n for kind, n in writes if kind is Kind.CHUNKS] == [32, 32, 6]
    assert len(writes) == 9  # and two manifest writes per group (provisional, final)
    assert len(flushes) == 1  # once, when the job ends

    writes.clear()
    changed = [*documents[:69], make_document(id="d69", text="Changed, and wrong-size.", title="", source="s")]
    report = await ingestor.ingest("kb", "acme", [*changed, make_document(id="new", text="New.", title="", source="s")])
    assert len(report.skipped) == 69
    assert report.added == ["new"]  # its group's batched write failed, so each document was written alone
    assert [f["id"] for f in report.failed] == ["d69"]
    assert await store.count("kb", "acme") == 71  # d69's first version stays
    assert [h.payload["doc_id"] for h in await store.search("kb", ["acme"], [1.0, 4.0, 0, 0], 1)] == ["new"]


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # the client asks the server on opening
async def test_the_configuration_picks_the_backend(tmp_path: Path) -> None:
    from gateway.rag.store.edge import EdgeStore

    server = VectorStore.open(RagStoreConfig.model_validate({"url": "http://127.0.0.1:1"}))
    assert isinstance(server, ServerStore)  # connects on its first call, not here
    await server.close()
    for thread in threading.enumerate():  # the client's version check warns from its own thread: let it, here
        if "_check_compatibility" in thread.name:
            thread.join(timeout=30)
    embedded = VectorStore.open(RagStoreConfig(path=tmp_path / "q"))
    assert isinstance(embedded, EdgeStore)
    await embedded.close()
