"""The vector store's naming and bookkeeping, on real embedded Qdrant storage in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model import RagStoreConfig
from gateway.rag import SHARED
from gateway.rag.store import StoreError, VectorStore, partition_name


class Interrupted(Exception):
    """Stands for the process being stopped mid-write."""


TENANTS = ["acme.com", "a_b", "x:y/z", "é", "\x0e9", "_shared", "X__manifest", "plain"]


async def test_partition_names_are_one_to_one_and_reversible(tmp_path: Path) -> None:
    names = {partition_name("kb", t) for t in [*TENANTS, SHARED]}
    assert len(names) == len(TENANTS) + 1
    assert all("__" not in name.split("__t_", 1)[-1] for name in names if "__t_" in name)
    store = VectorStore.open(RagStoreConfig(path=tmp_path / "q"), dimension=4)
    try:
        for tenant in [*TENANTS, SHARED]:
            await store.ensure_partition("kb", tenant)
        assert sorted(t for _, t in await store.partitions("kb")) == sorted([*TENANTS, SHARED])
    finally:
        await store.close()


async def test_an_interrupted_write_leaves_nothing_a_delete_cannot_find(tmp_path: Path) -> None:
    store = VectorStore.open(RagStoreConfig(path=tmp_path / "q"), dimension=2)
    try:
        await store.ensure_partition("kb", "t")
        vectors = [[1.0, float(i)] for i in range(5)]
        payloads = [{"chunk": i} for i in range(5)]
        await store.write_document("kb", "t", "d", vectors[:2], payloads[:2], {"content_hash": "v1", "chunks": 2}, 0)
        # a longer version whose final manifest was never written (the run was interrupted)
        interrupted = store.client.upsert

        async def fail_on_final_manifest(name: str, points: list, wait: bool = True) -> None:  # type: ignore[type-arg]
            if name.endswith("__manifest") and points[0].payload.get("content_hash"):
                raise Interrupted
            await interrupted(name, points=points, wait=wait)

        store.client.upsert = fail_on_final_manifest  # type: ignore[method-assign,assignment]
        with pytest.raises(Interrupted):
            await store.write_document("kb", "t", "d", vectors, payloads, {"content_hash": "v2", "chunks": 5}, 2)
        store.client.upsert = interrupted  # type: ignore[method-assign]
        manifest = await store.manifest("kb", "t", "d")
        assert manifest is not None
        assert manifest.content_hash == ""  # looks changed: the next run replaces it
        assert manifest.chunks == 5
        assert await store.count("kb", "t") == 5
        assert await store.delete_document("kb", "t", "d")
        assert await store.count("kb", "t") == 0
    finally:
        await store.close()


async def test_the_vector_size_matters_only_to_write(tmp_path: Path) -> None:
    """A store opened without a size (as ``turnout rag list`` and ``rag delete`` open it, without loading the
    model) reads and deletes; one given the model's size refuses a partition built with another size."""
    config = RagStoreConfig(path=tmp_path / "q")
    store = VectorStore.open(config, dimension=4)
    try:
        await store.ensure_partition("kb", "t")
        await store.write_document("kb", "t", "d", [[1.0, 0, 0, 0]], [{"chunk": 0}], {"content_hash": "h"}, 0)
    finally:
        await store.close()
    reader = VectorStore.open(config)
    try:
        assert [m.doc_id for m in await reader.manifests("kb", "t")] == ["d"]
        with pytest.raises(StoreError, match="opened without a vector size"):
            await reader.ensure_partition("kb", "t")
        with pytest.raises(StoreError, match=r"holds vectors of 4 dimensions but the embedding model makes 384"):
            await reader.sized(384).ensure_partition("kb", "t")
        await reader.sized(4).ensure_partition("kb", "t")  # the size that built it
        assert await reader.delete_document("kb", "t", "d")
        assert await reader.drop_partition("kb", "t")
    finally:
        await reader.close()
