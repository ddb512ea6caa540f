"""Reading a store that earlier versions wrote with qdrant-client's local mode, to move it to the current layout.

That format is a directory with ``meta.json`` and ``collection/``, one Qdrant collection per (collection,
tenant) *partition*: ``NAME__t_TENANT`` (every character of the tenant outside ``[A-Za-z0-9-]`` written as
``~`` and six hex digits), ``NAME__shared``, each with a ``__manifest`` collection beside it; a chunk's id
was derived from its document id and position only. Every point is read here, with its vector and payload,
and given the id and ``tenant`` value of the current layout; the caller writes them and commits
(:func:`gateway.rag.store.edge._migrate`), then :func:`set_aside` keeps the old files under
``qdrant-local-backup/``.

May import: ``qdrant_client``, ``gateway.rag`` and :mod:`gateway.rag.store.base`.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.rag import SHARED
from gateway.rag.store.base import (
    BLOCK,
    Kind,
    Point,
    StoreError,
    StoreLocked,
    check_collection,
    chunk_point,
    manifest_point,
    tenant_key,
)

BACKUP = "qdrant-local-backup"
ENTRIES = ("collection", "meta.json", ".lock")  # what qdrant-client's local mode keeps at the root
_NAMESPACE = uuid.UUID("6f1f5b0e-3c55-4e07-9a4e-2b1c9d7f0a11")  # the old ids' namespace (as the new ids')
_MANIFEST_SUFFIX = "__manifest"
_SEP = "__t_"
_SHARED_SUFFIX = "__shared"


def is_legacy(root: Path) -> bool:
    return (root / "meta.json").is_file() and (root / "collection").is_dir()


def set_aside(root: Path) -> Path | None:
    """Move what is left of the old format at ``root`` into ``qdrant-local-backup/`` (numbered if that one is
    taken); None when nothing was left."""
    present = [root / name for name in ENTRIES if (root / name).exists()]
    if not any(p.name != ".lock" for p in present):
        return None
    backup, number = root / BACKUP, 1
    while any((backup / p.name).exists() for p in present):
        number += 1
        backup = root / f"{BACKUP}-{number}"
    backup.mkdir(exist_ok=True)
    for path in sorted(present, key=lambda p: p.name == "meta.json"):  # meta.json last: it marks the format
        path.rename(backup / path.name)
    return backup


def _old_chunk_id(doc_id: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}\0{index}"))


def _partition(name: str) -> tuple[str, str] | None:
    """(collection, tenant) of an old chunk collection's name; None for manifests and foreign names."""
    if name.endswith(_MANIFEST_SUFFIX):
        return None
    if name.endswith(_SHARED_SUFFIX):
        return name.removesuffix(_SHARED_SUFFIX), SHARED
    if _SEP in name:
        owner, _, escaped = name.partition(_SEP)
        return owner, re.sub(r"~([0-9a-f]{6})", lambda m: chr(int(m[1], 16)), escaped)
    return None


class Legacy:
    """An open store in the old format."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._partitions: dict[str, list[tuple[str, str]]] = {}  # collection -> [(old name, tenant)]
        for found in client.get_collections().collections:
            parsed = _partition(found.name)
            if parsed is not None:
                self._partitions.setdefault(parsed[0], []).append((found.name, parsed[1]))

    def collections(self) -> dict[str, int]:
        """Every collection with its vector size (all its partitions must agree: a collection has one)."""
        sizes: dict[str, int] = {}
        for collection, partitions in sorted(self._partitions.items()):
            check_collection(collection)
            found = {}
            for name, tenant in partitions:
                vectors = self.client.get_collection(name).config.params.vectors
                if not isinstance(getattr(vectors, "size", None), int):
                    raise StoreError(f"the old collection {name} does not hold one unnamed vector per point")
                tenant_key(tenant)  # a tenant named like the shared documents' value cannot be moved
                found[name] = vectors.size
            if len(set(found.values())) > 1:
                raise StoreError(
                    f"the partitions of collection {collection} hold vectors of different sizes ({found}); "
                    "one collection now holds one size: delete the partitions built with another model first"
                )
            sizes[collection] = next(iter(found.values()))
        return sizes

    def _scroll(self, name: str, vectors: bool) -> Iterator[Any]:
        offset: Any = None
        while True:
            page, offset = self.client.scroll(name, limit=BLOCK, offset=offset, with_payload=True, with_vectors=vectors)
            yield from page
            if offset is None:
                return

    def points(self, collection: str) -> Iterator[tuple[Kind, list[Point]]]:
        """Every manifest and chunk of a collection in the current layout, in blocks of at most ``BLOCK``."""
        exists = {c.name for c in self.client.get_collections().collections}
        for name, tenant in self._partitions[collection]:
            positions: dict[str, tuple[str, int]] = {}  # old chunk id -> (document, position)
            block: list[Point] = []
            if name + _MANIFEST_SUFFIX in exists:
                for record in self._scroll(name + _MANIFEST_SUFFIX, False):
                    payload = dict(record.payload or {})
                    doc_id = str(payload.get("doc_id"))
                    for index in range(int(payload.get("chunks", 0))):
                        positions[_old_chunk_id(doc_id, index)] = (doc_id, index)
                    block.append(manifest_point(tenant, doc_id, payload))
                    if len(block) == BLOCK:
                        yield Kind.MANIFESTS, block
                        block = []
            if block:
                yield Kind.MANIFESTS, block
                block = []
            for record in self._scroll(name, True):
                block.append(self._chunk(tenant, record, positions))
                if len(block) == BLOCK:
                    yield Kind.CHUNKS, block
                    block = []
            if block:
                yield Kind.CHUNKS, block

    @staticmethod
    def _chunk(tenant: str, record: Any, positions: dict[str, tuple[str, int]]) -> Point:
        payload = dict(record.payload or {})
        vector = record.vector
        if not isinstance(vector, list):
            raise StoreError(f"point {record.id} does not hold one unnamed vector")
        place = positions.get(str(record.id))
        if place is None and isinstance(payload.get("doc_id"), str) and isinstance(payload.get("chunk"), int):
            place = (payload["doc_id"], payload["chunk"])
        if place is not None:
            return chunk_point(tenant, place[0], place[1], vector, payload)
        # A chunk no manifest accounts for (none should exist): kept, under an id of its own.
        orphan = str(uuid.uuid5(_NAMESPACE, f"{tenant}\0orphan\0{record.id}"))
        return Point(orphan, vector, {**payload, "tenant": tenant_key(tenant)})


@contextlib.contextmanager
def opened(root: Path) -> Iterator[Legacy]:
    """The old store, read through qdrant-client's local mode (which loads it whole into memory)."""
    from qdrant_client import QdrantClient

    try:
        client = QdrantClient(path=str(root))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise StoreLocked(
                f"the vector store at {root} is open in another process (a running gateway?); "
                "ingest through the gateway's API, or stop it first"
            ) from exc
        raise
    try:
        yield Legacy(client)
    finally:
        client.close()
