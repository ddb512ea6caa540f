"""The embedded backend: Qdrant's own engine in-process (qdrant-edge), one shard per container on disk.

Measured on 2 cores at 100k chunks of 384 dimensions: a search filtered to a tenant and the shared
documents takes 0.5-1.5 ms p50 when they hold 1-20% of the chunks and ~7 ms when they hold all of them,
by exact (brute-force) scoring, where qdrant-client's local mode took 68 ms unfiltered and 0.7 s with a
filter (it scores in Python and ignores payload indexes); writes store ~13,000 chunks/s in blocks of 1,000
points, where local mode committed each point to SQLite (~550 points/s). HNSW is never built here:
``EdgeShard.optimize()`` builds it in ~40 s at 100k while holding the GIL (the event loop would stop), and
exact search is already within budget and exact by construction. Every engine call holds the GIL, so calls
are made inline: a thread would buy nothing.

Layout under ``rag.store.path``: ``shards/NAME__chunks`` and ``shards/NAME__manifests`` (a shard is a
directory: ``edge_config.json``, ``segments/``, ``wal/``), and ``turnout.lock``, held while the store is
open so that one process owns it (as each shard's WAL lock would, but before any shard is touched). A
directory in qdrant-client's local format (``meta.json`` and ``collection/``, written by earlier versions)
is moved into this layout when it is opened (:mod:`gateway.rag.store.legacy`): written beside, committed by
one rename, the old files kept in ``qdrant-local-backup/``.

May import: ``qdrant_edge``, :mod:`gateway.rag.store.base` and :mod:`gateway.rag.store.legacy`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from gateway.rag.store import legacy
from gateway.rag.store.base import Kind, Point, StoredChunk, StoreError, StoreLocked, VectorStore, Where

log = logging.getLogger("turnout.rag")

SHARDS = "shards"
LOCK = "turnout.lock"
_STAGING = "shards.migrating"
_FACET_LIMIT = 1_000_000  # tenants listed at most per collection
_INDEXED = {"tenant": qe.KeywordIndexParams(is_tenant=True), "doc_id": qe.KeywordIndexParams()}


def _locked(root: Path) -> StoreLocked:
    return StoreLocked(
        f"the vector store at {root} is open in another process (a running gateway?); "
        "ingest through the gateway's API, or stop it first"
    )


def _engine_error(exc: Exception, root: Path, what: str) -> StoreError:
    if "WouldBlock" in str(exc):  # "Can't init WAL: Kind(WouldBlock)": another process has the shard open
        return _locked(root)
    return StoreError(f"cannot {what} in the vector store at {root}: {exc}")


def _filter(where: Where) -> qe.Filter:
    tenants: list[qe.FieldCondition] = [qe.FieldCondition("tenant", match=qe.MatchValue(k)) for k in where.tenants]
    must: list[qe.FieldCondition] = []
    if where.doc_id is not None:
        must.append(qe.FieldCondition("doc_id", match=qe.MatchValue(where.doc_id)))
    if len(tenants) == 1:
        return qe.Filter(must=[*tenants, *must])
    return qe.Filter(should=list(tenants), must=list(must) or None)


@dataclass(slots=True)
class _Collection:
    size: int
    chunks: qe.EdgeShard
    manifests: qe.EdgeShard

    def shard(self, kind: Kind) -> qe.EdgeShard:
        return self.chunks if kind is Kind.CHUNKS else self.manifests


class ShardSet:
    """The open shards of a directory, two per collection; synchronous, as the engine is."""

    def __init__(self, directory: Path, root: Path, lock: int | None = None) -> None:
        self.directory = directory
        self.root = root  # the store's directory, for messages
        self.lock = lock  # the descriptor holding ``turnout.lock``, when this set is the store's
        self.open: dict[str, _Collection] = {}

    def load_all(self) -> None:
        if not self.directory.is_dir():
            return
        for entry in sorted(self.directory.iterdir()):
            suffix = "__" + Kind.CHUNKS.value
            if entry.name.endswith(suffix):
                self._load(entry.name.removesuffix(suffix))

    def _load(self, collection: str) -> None:
        chunks_dir = self.directory / Kind.CHUNKS.container(collection)
        try:
            size = int(json.loads((chunks_dir / "edge_config.json").read_text())["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read the vector size of {chunks_dir}: {exc}") from exc
        try:
            chunks = qe.EdgeShard.load(str(chunks_dir))
        except Exception as exc:
            raise _engine_error(exc, self.root, f"open {chunks_dir.name}") from exc
        try:
            manifests_dir = self.directory / Kind.MANIFESTS.container(collection)
            if (manifests_dir / "edge_config.json").is_file():
                manifests = qe.EdgeShard.load(str(manifests_dir))
            else:  # creating the collection was interrupted between its two shards
                manifests = self._new_shard(manifests_dir, 1, qe.Distance.Dot)
        except Exception as exc:
            chunks.close()
            raise _engine_error(exc, self.root, f"open the manifests of {collection}") from exc
        for shard in (chunks, manifests):
            missing = _INDEXED.keys() - shard.info().payload_schema.keys()
            for field in sorted(missing):
                shard.update(qe.UpdateOperation.create_field_index(field, _INDEXED[field]))
        self.open[collection] = _Collection(size, chunks, manifests)

    @staticmethod
    def _new_shard(directory: Path, size: int, distance: qe.Distance) -> qe.EdgeShard:
        shard = qe.EdgeShard.create(str(directory), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size, distance)))
        for field, params in _INDEXED.items():  # before any point: built as points arrive
            shard.update(qe.UpdateOperation.create_field_index(field, params))
        return shard

    def create(self, collection: str, size: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        chunks = self._new_shard(self.directory / Kind.CHUNKS.container(collection), size, qe.Distance.Cosine)
        manifests = self._new_shard(self.directory / Kind.MANIFESTS.container(collection), 1, qe.Distance.Dot)
        self.open[collection] = _Collection(size, chunks, manifests)

    def drop(self, collection: str) -> None:
        found = self.open.pop(collection)
        for kind in Kind:
            found.shard(kind).close()
            shutil.rmtree(self.directory / kind.container(collection))

    def upsert(self, kind: Kind, collection: str, points: Sequence[Point]) -> None:
        batch = [qe.Point(p.id, list(p.vector), p.payload) for p in points]
        self.open[collection].shard(kind).update(qe.UpdateOperation.upsert_points(batch))

    def flush(self) -> None:
        for found in self.open.values():
            found.chunks.flush()
            found.manifests.flush()

    def close(self) -> None:
        """Flush and close every shard, then let another process have the store."""
        while self.open:
            _, found = self.open.popitem()
            for shard in (found.chunks, found.manifests):
                shard.flush()
                shard.close()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def _lock(root: Path) -> int | None:
    """Hold ``turnout.lock`` (released when its descriptor closes, also when the process dies)."""
    if sys.platform == "win32":  # no flock: each shard's WAL lock still admits one process
        return None
    import fcntl

    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked(root) from None
    return fd


def _migrate(root: Path) -> None:
    """Move a store in qdrant-client's local format into the current layout, all or nothing."""
    staging = root / _STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted attempt: the old files are intact
    shards = ShardSet(staging, root)
    try:
        staging.mkdir()
        with legacy.opened(root) as old:
            for collection, size in old.collections().items():
                shards.create(collection, size)
                for kind, block in old.points(collection):
                    shards.upsert(kind, collection, block)
        shards.close()
    except BaseException as exc:
        shards.close()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, StoreError) or not isinstance(exc, Exception):
            raise
        raise StoreError(
            f"cannot move the vector store at {root} from qdrant-client's local format to the current one "
            f"({exc.__class__.__name__}: {exc}); its files are unchanged"
        ) from exc
    staging.rename(root / SHARDS)  # the commit: from here on the store is in the current layout


class EdgeStore(VectorStore):
    def __init__(self, shards: ShardSet, dimension: int | None = None) -> None:
        super().__init__(dimension)
        self._shards = shards  # shared with the stores :meth:`sized` makes

    @classmethod
    def open_path(cls, root: Path, dimension: int | None = None) -> EdgeStore:
        """Open (and lock) the store at ``root``, moving one of the old format first; loads every shard."""
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open the vector store at {root}: {exc.strerror or exc}") from exc
        shards = ShardSet(root / SHARDS, root, _lock(root))
        try:
            if not (root / SHARDS).exists() and legacy.is_legacy(root):
                _migrate(root)
            # after the commit (also when an earlier run stopped right after it)
            if (root / SHARDS).exists() and (backup := legacy.set_aside(root)) is not None:
                log.warning("moved the vector store at %s to the current layout; the old files are in %s", root, backup)
            shards.load_all()
        except BaseException:
            shards.close()
            raise
        return cls(shards, dimension)

    def sized(self, dimension: int) -> EdgeStore:
        return EdgeStore(self._shards, dimension)

    async def close(self) -> None:
        self._shards.close()

    async def flush(self) -> None:
        self._shards.flush()

    async def _collections(self) -> list[str]:
        return sorted(self._shards.open)

    async def _vector_size(self, collection: str) -> int | None:
        found = self._shards.open.get(collection)
        return None if found is None else found.size

    async def _create(self, collection: str, dimension: int) -> None:
        self._shards.create(collection, dimension)

    async def _drop(self, collection: str) -> None:
        self._shards.drop(collection)

    def _shard(self, kind: Kind, collection: str) -> qe.EdgeShard:
        return self._shards.open[collection].shard(kind)

    async def _upsert(self, kind: Kind, collection: str, points: Sequence[Point]) -> None:
        self._shards.upsert(kind, collection, points)

    async def _delete(self, kind: Kind, collection: str, ids: Sequence[str]) -> None:
        self._shard(kind, collection).update(qe.UpdateOperation.delete_points(list(ids)))

    async def _delete_where(self, kind: Kind, collection: str, where: Where) -> None:
        self._shard(kind, collection).update(qe.UpdateOperation.delete_points_by_filter(_filter(where)))

    async def _retrieve(self, kind: Kind, collection: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        records = self._shard(kind, collection).retrieve(list(ids), True, False)  # positional: see the stub
        return [dict(r.payload or {}) for r in records]

    async def _scroll(
        self, kind: Kind, collection: str, where: Where, offset: Any, limit: int
    ) -> tuple[list[dict[str, Any]], Any]:
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=_filter(where), with_payload=True)
        records, following = self._shard(kind, collection).scroll(request)
        return [dict(r.payload or {}) for r in records], following

    async def _count(self, kind: Kind, collection: str, where: Where | None) -> int:
        request = qe.CountRequest(exact=True, filter=None if where is None else _filter(where))
        return self._shard(kind, collection).count(request)

    async def _tenant_keys(self, collection: str) -> list[str]:
        request = qe.FacetRequest(key="tenant", limit=_FACET_LIMIT, exact=True)
        return [str(hit.value) for hit in self._shard(Kind.MANIFESTS, collection).facet(request) if hit.count > 0]

    async def _query(self, collection: str, where: Where, vector: Sequence[float], limit: int) -> list[StoredChunk]:
        request = qe.QueryRequest(
            limit=limit, query=qe.Query.Nearest(list(vector)), filter=_filter(where), with_payload=True
        )
        found = self._shard(Kind.CHUNKS, collection).query(request)
        return [StoredChunk(str(p.id), float(p.score), dict(p.payload or {})) for p in found]
