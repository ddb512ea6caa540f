"""Ingestion: documents in, chunks embedded and stored, with a report of what happened to each.

A document's id is stable, so ingesting it again compares content hashes: unchanged is skipped
without embedding anything, changed replaces exactly its chunks. Documents are independent, so one
failure is reported and the rest go on.

Documents go in groups: one manifest lookup, one embedding call and one batched store write per group
(the store writes at most a thousand points per call), and the store is flushed when the job ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.config.model import ChunkingConfig
from gateway.embeddings import Embedder
from gateway.rag.chunking import Chunk, chunk_text
from gateway.rag.documents import Document
from gateway.rag.store import DocumentWrite, Manifest, VectorStore

log = logging.getLogger("turnout.rag")

Outcome = Literal["added", "replaced", "skipped"]
_GROUP = 32  # documents whose chunks are embedded together


@dataclass(slots=True)
class IngestReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0

    def record(self, doc_id: str, outcome: Outcome, chunks: int) -> None:
        getattr(self, outcome).append(doc_id)
        self.chunks += chunks

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "skipped": self.skipped,
            "failed": self.failed,
            "chunks": self.chunks,
        }


class Ingestor:
    def __init__(self, store: VectorStore, embedder: Embedder, chunking: ChunkingConfig) -> None:
        self.store = store
        self.embedder = embedder
        self.chunking = chunking

    async def ingest(
        self,
        collection: str,
        tenant: str,
        documents: Iterable[Document],
        progress: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest documents in groups, so the chunks of many small documents share embedding batches."""
        report = IngestReport()
        await self.store.ensure_partition(collection, tenant)
        try:
            group: list[Document] = []
            for document in documents:
                group.append(document)
                if len(group) == _GROUP:
                    await self._ingest_group(collection, tenant, group, report)
                    if progress is not None:
                        progress(len(group))
                    group = []
            if group:
                await self._ingest_group(collection, tenant, group, report)
                if progress is not None:
                    progress(len(group))
        finally:
            await self.store.flush()
        return report

    async def _ingest_group(
        self, collection: str, tenant: str, documents: list[Document], report: IngestReport
    ) -> None:
        # the model's limit counts its two special tokens; chunks are counted without them
        max_tokens = min(self.chunking.max_tokens, self.embedder.max_tokens - 2)
        overlap = min(self.chunking.overlap_tokens, max_tokens // 2 - 1)
        try:
            stored = await self.store.lookup(collection, tenant, [d.id for d in documents])
        except Exception as exc:  # the store is down: every document of the group is reported
            for document in documents:
                self._failed(report, document, exc)
            return
        pending: list[tuple[Document, Manifest | None, list[Chunk]]] = []
        for document in documents:
            previous = stored.get(document.id)
            if previous is not None and previous.content_hash == document.content_hash:
                report.record(document.id, "skipped", 0)
                continue
            try:
                chunks = chunk_text(
                    document.text, self.embedder.count_tokens, max_tokens=max_tokens, overlap_tokens=overlap
                )
            except Exception as exc:  # one bad document must not stop the others; it is reported
                self._failed(report, document, exc)
                continue
            pending.append((document, previous, chunks))
        if not pending:
            return
        vectors = await self.embedder.embed_documents([c.text for _, _, chunks in pending for c in chunks])
        writes: list[tuple[Document, Manifest | None, DocumentWrite]] = []
        position = 0
        for document, previous, chunks in pending:
            mine = vectors[position : position + len(chunks)]
            position += len(chunks)
            writes.append((document, previous, self._write(tenant, document, previous, chunks, mine)))
        try:
            await self.store.write_documents(collection, tenant, [write for _, _, write in writes])
        except Exception:
            # Which document the store refused: each again alone (writing one twice changes nothing).
            for document, previous, write in writes:
                try:
                    await self.store.write_documents(collection, tenant, [write])
                except Exception as exc:  # reported per document, as above
                    self._failed(report, document, exc)
                    continue
                report.record(document.id, "replaced" if previous is not None else "added", len(write.vectors))
            return
        for document, previous, write in writes:
            report.record(document.id, "replaced" if previous is not None else "added", len(write.vectors))

    @staticmethod
    def _failed(report: IngestReport, document: Document, exc: Exception) -> None:
        log.warning("ingesting %s failed: %s", document.id, exc)
        report.failed.append({"id": document.id, "reason": f"{exc.__class__.__name__}: {exc}"})

    @staticmethod
    def _write(
        tenant: str, document: Document, previous: Manifest | None, chunks: list[Chunk], vectors: list[list[float]]
    ) -> DocumentWrite:
        meta = {
            "doc_id": document.id,
            "source": document.source,
            "title": document.title,
            "url": document.url,
            "updated_at": document.updated_at,
            "tenant": tenant,
        }
        payloads = [{**meta, "chunk": c.index, "text": c.text} for c in chunks]
        ingested_at = datetime.now(UTC).isoformat(timespec="seconds")  # ISO 8601, as updated_at is
        manifest = {**meta, "content_hash": document.content_hash, "chunks": len(chunks), "ingested_at": ingested_at}
        return DocumentWrite(document.id, vectors, payloads, manifest, previous.chunks if previous else 0)
