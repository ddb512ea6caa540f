"""The embedded store's own duties: one process at a time, and stores of the old format moved into the new one.

The old format is written here as earlier versions wrote it, through qdrant-client's local mode: one
collection per (collection, tenant) partition, ``NAME__t_TENANT`` (escaped) and ``NAME__shared``, each
with a ``__manifest`` collection, chunk ids derived from the document id and position only.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from gateway.config.model import RagStoreConfig
from gateway.rag import SHARED
from gateway.rag.store import StoreError, StoreLocked, VectorStore
from gateway.rag.store.edge import ShardSet

OLD_NAMESPACE = uuid.UUID("6f1f5b0e-3c55-4e07-9a4e-2b1c9d7f0a11")
# (tenant, document, chunk texts): two tenants with a document of the same id, and an escaped name
OLD_DATA = [
    (SHARED, "same", ["shared one", "shared two"]),
    ("acme", "same", ["acme one"]),
    ("acme", "other", ["acme other"]),
    ("x:y/z", "d", ["odd one", "odd two", "odd three"]),
]


def _old_partition(collection: str, tenant: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9-]", lambda m: f"~{ord(m.group()):06x}", tenant)
    return f"{collection}__t_{safe}" if tenant else f"{collection}__shared"


def _old_store(path: Path, dimension: int = 4) -> None:
    client = QdrantClient(path=str(path))
    try:
        for position, (tenant, doc_id, texts) in enumerate(OLD_DATA):
            name = _old_partition("kb", tenant)
            for each, size in ((name, dimension), (name + "__manifest", 1)):
                if not client.collection_exists(each):
                    params = models.VectorParams(size=size, distance=models.Distance.COSINE)
                    client.create_collection(each, vectors_config=params)
            points = [
                models.PointStruct(
                    id=str(uuid.uuid5(OLD_NAMESPACE, f"{doc_id}\0{i}")),
                    vector=[1.0, float(position), float(i), 0.0],
                    payload={"doc_id": doc_id, "tenant": tenant, "chunk": i, "text": text},
                )
                for i, text in enumerate(texts)
            ]
            client.upsert(name, points=points)
            manifest = {"doc_id": doc_id, "tenant": tenant, "content_hash": f"h-{doc_id}", "chunks": len(texts)}
            client.upsert(
                name + "__manifest",
                points=[
                    models.PointStruct(
                        id=str(uuid.uuid5(OLD_NAMESPACE, f"{doc_id}\0manifest")), vector=[1.0], payload=manifest
                    )
                ],
            )
    finally:
        client.close()


async def _all_texts(store: VectorStore, tenant: str) -> list[str]:
    return sorted(h.payload["text"] for h in await store.search("kb", [tenant], [1.0, 0, 0, 0], 50))


async def test_a_store_of_the_old_format_is_moved_to_the_new_one(tmp_path: Path) -> None:
    root = tmp_path / "q"
    _old_store(root)
    store = VectorStore.open(RagStoreConfig(path=root))  # as `turnout rag list` opens it: no model
    try:
        assert await store.partitions() == [("kb", SHARED), ("kb", "acme"), ("kb", "x:y/z")]
        assert await _all_texts(store, SHARED) == ["shared one", "shared two"]
        assert await _all_texts(store, "acme") == ["acme one", "acme other"]
        assert await _all_texts(store, "x:y/z") == ["odd one", "odd three", "odd two"]
        manifests = await store.manifests("kb", "acme")
        assert [(m.doc_id, m.content_hash, m.chunks) for m in manifests] == [
            ("other", "h-other", 1),
            ("same", "h-same", 1),
        ]
        assert manifests[0].payload["tenant"] == "acme"
        # ids and manifests were rebuilt: deleting one tenant's document leaves the other's of the same id
        assert await store.delete_document("kb", "acme", "same")
        assert await _all_texts(store, "acme") == ["acme other"]
        assert await store.count("kb", SHARED) == 2
    finally:
        await store.close()
    assert not (root / "meta.json").exists()
    assert not (root / "collection").exists()
    assert (root / "qdrant-local-backup" / "meta.json").is_file()
    assert (root / "qdrant-local-backup" / "collection").is_dir()
    reopened = VectorStore.open(RagStoreConfig(path=root), dimension=4)
    try:
        await reopened.ensure_partition("kb", "acme")  # the old vectors' size: writable by the same model
        assert await reopened.count("kb", "x:y/z") == 3
    finally:
        await reopened.close()


async def test_a_failed_move_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "q"
    _old_store(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    calls = 0
    upsert = ShardSet.upsert

    def failing(self: ShardSet, *args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        upsert(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardSet, "upsert", failing)
    with pytest.raises(StoreError, match=r"cannot move the vector store at .* its files are unchanged") as caught:
        VectorStore.open(RagStoreConfig(path=root))
    assert "No space left on device" in str(caught.value)
    monkeypatch.undo()
    after = sorted(p.relative_to(root) for p in root.rglob("*") if p.name != "turnout.lock")
    assert after == before  # all or nothing
    store = VectorStore.open(RagStoreConfig(path=root))
    try:
        assert await _all_texts(store, "acme") == ["acme one", "acme other"]
    finally:
        await store.close()


async def test_a_move_stopped_after_its_commit_is_finished(tmp_path: Path) -> None:
    root = tmp_path / "q"
    _old_store(root)
    await VectorStore.open(RagStoreConfig(path=root)).close()
    for name in ("meta.json", "collection"):  # as if the process died between the commit and the set-aside
        (root / "qdrant-local-backup" / name).rename(root / name)
    store = VectorStore.open(RagStoreConfig(path=root))
    try:
        assert await _all_texts(store, "acme") == ["acme one", "acme other"]  # not moved twice
        assert await store.count("kb", "acme") == 2
    finally:
        await store.close()
    assert (root / "qdrant-local-backup" / "meta.json").is_file()
    assert not (root / "meta.json").exists()


async def test_partitions_of_different_sizes_are_not_moved(tmp_path: Path) -> None:
    root = tmp_path / "q"
    _old_store(root)
    client = QdrantClient(path=str(root))
    client.create_collection("kb__t_big", vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE))
    client.close()
    with pytest.raises(StoreError, match="different sizes"):
        VectorStore.open(RagStoreConfig(path=root))
    assert (root / "meta.json").is_file()
    assert not (root / "shards").exists()


async def test_one_process_at_a_time(tmp_path: Path) -> None:
    config = RagStoreConfig(path=tmp_path / "q")
    holder = VectorStore.open(config, dimension=4)
    await holder.ensure_partition("kb", "t")
    with pytest.raises(StoreLocked, match=r"is open in another process \(a running gateway\?\)"):
        VectorStore.open(config)
    await holder.close()
    await holder.close()  # closing twice is harmless
    await VectorStore.open(config).close()


async def test_a_shard_held_elsewhere_is_reported_as_locked(tmp_path: Path) -> None:
    """The engine's own lock (each shard's WAL) says the same, where the store's lock file is not shared."""
    config = RagStoreConfig(path=tmp_path / "q")
    store = VectorStore.open(config, dimension=4)
    await store.ensure_partition("kb", "t")
    await store.close()
    held = qe.EdgeShard.load(str(tmp_path / "q" / "shards" / "kb__chunks"))
    try:
        with pytest.raises(StoreLocked, match="is open in another process"):
            VectorStore.open(config)
    finally:
        held.close()
    await VectorStore.open(config).close()


async def test_an_old_store_held_by_an_old_gateway_is_reported_as_locked(tmp_path: Path) -> None:
    root = tmp_path / "q"
    _old_store(root)
    old_gateway = QdrantClient(path=str(root))
    try:
        with pytest.raises(StoreLocked, match="is open in another process"):
            VectorStore.open(RagStoreConfig(path=root))
    finally:
        old_gateway.close()
    await VectorStore.open(RagStoreConfig(path=root)).close()
