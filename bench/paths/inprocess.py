"""The paths benchmark's measurements inside one process: retrieval as the gateway pays it, and ingestion.

Runs as its own process (``python bench/paths/inprocess.py PLAN.json``, JSON results on stdout), which
``run.py`` pins to the gateway's core after the gateway has stopped, so it has that core alone. It uses the
gateway's own classes, as the gateway builds them, and nothing private:

* **Retrieval** over growing stores (10,000 then 100,000 chunks): synthetic unit vectors written straight
  into the store with ``VectorStore.write_document`` (1,000 chunks a document, payloads shaped as the
  Ingestor's, then ``flush`` as the Ingestor ends a job), since embedding 100,000 real chunks would take hours
  on this CPU; then, per query, a new question's embedding (``Embedder.embed_query``) and the search of the
  shared partition (``retrieve``, what the RAG backend calls), each timed. The embedded store searches exactly
  (every vector of the partition is scored), so the vectors' values do not change a search's time. The store's
  files go to ``/dev/shm`` when it exists, which only makes writing the 100,000 points quicker.
* **Ingestion**: the same ~200-token chunks (one a document) embedded by the embedder alone
  (``Embedder.embed_documents``, the call the Ingestor makes) and ingested by ``Ingestor.ingest`` into a
  store on disk in the temporary directory, in rounds that alternate which goes first.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "overhead"))

from targets import vm_rss_kb

from gateway.config.model import ChunkingConfig, EmbeddingsConfig, RagStoreConfig
from gateway.embeddings import Embedder
from gateway.rag import SHARED
from gateway.rag.documents import make_document
from gateway.rag.ingest import Ingestor
from gateway.rag.retrieval import retrieve
from gateway.rag.store import VectorStore
from paths import workload

Json = dict[str, Any]
CHUNKS_PER_DOCUMENT = 1000  # synthetic chunks written per write_document call
QUESTION_OFFSET = 10_000_000  # question indices far from the ones the load generator sends
CEILING_OFFSET = 20_000_000  # and the embedding-alone measurement's, far from both


def log(message: str) -> None:
    print(f"[inprocess] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb() -> float:
    return vm_rss_kb(os.getpid()) / 1024


def long_chunk(embedder: Embedder, index: int, low: int, high: int) -> str:
    """A support case log of ``low`` to ``high`` model tokens: one chunk under the default chunking (200)."""
    text = ""
    for sentence in workload.chunk_sentences(index):
        longer = f"{text} {sentence}".strip()
        if embedder.count_tokens(longer) > high:
            break
        text = longer
        if embedder.count_tokens(text) >= low:
            break
    return text


async def fill(store: VectorStore, start: int, stop: int, dimension: int, rng: np.random.Generator) -> None:
    """Synthetic chunks ``start``..``stop`` written into the shared partition, a document per 1,000."""
    texts = [_sentences(i, 6) for i in range(50)]  # ~120 tokens each, as a chunk's payload carries its text
    for first in range(start, stop, CHUNKS_PER_DOCUMENT):
        count = min(CHUNKS_PER_DOCUMENT, stop - first)
        vectors = rng.standard_normal((count, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        doc_id = f"synthetic-{first // CHUNKS_PER_DOCUMENT}"
        meta = {"doc_id": doc_id, "source": f"synthetic/{doc_id}", "title": doc_id, "url": None, "updated_at": None}
        payloads = [
            {**meta, "tenant": SHARED, "chunk": i, "text": texts[(first + i) % len(texts)]} for i in range(count)
        ]
        manifest = {**meta, "tenant": SHARED, "content_hash": "synthetic", "chunks": count}
        await store.write_document(workload.COLLECTION, SHARED, doc_id, vectors.tolist(), payloads, manifest, 0)
    await store.flush()  # as the Ingestor ends a job


def _sentences(index: int, count: int) -> str:
    found = []
    for sentence in workload.chunk_sentences(index):
        found.append(sentence)
        if len(found) == count:
            break
    return " ".join(found)


async def retrieval(embedder: Embedder, store_dir: Path, sizes: list[int], queries: int) -> list[Json]:
    store = VectorStore.open(RagStoreConfig(path=store_dir), embedder.dimension)
    await store.ensure_partition(workload.COLLECTION, SHARED)
    rng = np.random.default_rng(7)
    rows: list[Json] = []
    written, asked = 0, 0
    try:
        for size in sizes:
            started = time.perf_counter()
            await fill(store, written, size, embedder.dimension, rng)
            insert_s = time.perf_counter() - started
            written = size
            log(f"{size:,} chunks in the store ({insert_s:.0f} s to write); timing {queries} retrievals")
            await retrieve(store, workload.COLLECTION, None, await embedder.embed_query("warm-up"), 4, -1.0)
            embed_ms, search_ms, total_ms = [], [], []
            for _ in range(queries):
                question = workload.kb_question(QUESTION_OFFSET + asked)
                asked += 1
                t0 = time.perf_counter()
                vector = await embedder.embed_query(question)
                t1 = time.perf_counter()
                hits = await retrieve(store, workload.COLLECTION, None, vector, 4, -1.0)
                t2 = time.perf_counter()
                if len(hits) != 4:
                    raise RuntimeError(f"a search over {size} chunks found {len(hits)} of 4")
                embed_ms.append((t1 - t0) * 1000)
                search_ms.append((t2 - t1) * 1000)
                total_ms.append((t2 - t0) * 1000)
            rows.append(
                {
                    "chunks": size,
                    "insert_s": insert_s,
                    "embed_ms": embed_ms,
                    "search_ms": search_ms,
                    "total_ms": total_ms,
                    "rss_mb": rss_mb(),
                }
            )
    finally:
        await store.close()
    return rows


async def embedding_alone(embedder: Embedder, queries: int, concurrency: int = 32) -> Json:
    """The semantic path's new questions through ``Embedder.embed_query`` with no gateway around it: one at a
    time (ms each), then ``concurrency`` callers at once (queries/s): the ceiling the model sets on this core."""
    for i in range(8):
        await embedder.embed_query(f"warm-up question number {i}")
    single: list[float] = []
    for i in range(queries):
        started = time.perf_counter()
        await embedder.embed_query(workload.semantic_question(CEILING_OFFSET + i))
        single.append((time.perf_counter() - started) * 1000)
    next_question = iter(range(CEILING_OFFSET + queries, CEILING_OFFSET + queries + 32 * queries))

    async def caller() -> int:
        done = 0
        for i in next_question:  # one shared iterator: every question is new, and the callers share the work
            await embedder.embed_query(workload.semantic_question(i))
            done += 1
        return done

    started = time.perf_counter()
    done = sum(await asyncio.gather(*(caller() for _ in range(concurrency))))
    return {"single_ms": single, "concurrent_qps": done / (time.perf_counter() - started), "concurrency": concurrency}


async def ingestion(embedder: Embedder, store_dir: Path, rounds: int, per_round: int) -> Json:
    store = VectorStore.open(RagStoreConfig(path=store_dir), embedder.dimension)
    ingestor = Ingestor(store, embedder, ChunkingConfig())
    limit = ChunkingConfig().max_tokens
    low, high = limit - 20, limit - 2
    alone = {"chunks": 0, "seconds": 0.0}
    ingested = {"chunks": 0, "seconds": 0.0, "documents": 0, "failed": 0}
    tokens: list[int] = []
    try:
        for round_ in range(rounds):
            indices = range(round_ * per_round, (round_ + 1) * per_round)
            texts = [long_chunk(embedder, i, low, high) for i in indices]
            tokens += [embedder.count_tokens(t) for t in texts]
            documents = [
                make_document(id=f"case-{i}", text=t, title=f"Case {i}", source=f"cases/{i}.txt")
                for i, t in zip(indices, texts, strict=True)
            ]
            for which in ("alone", "ingestor") if round_ % 2 == 0 else ("ingestor", "alone"):
                started = time.perf_counter()
                if which == "alone":
                    vectors = await embedder.embed_documents(texts)
                    alone["chunks"] += len(vectors)
                    alone["seconds"] += time.perf_counter() - started
                else:
                    report = await ingestor.ingest(workload.COLLECTION, f"round-{round_}", documents)
                    ingested["seconds"] += time.perf_counter() - started
                    ingested["chunks"] += report.chunks
                    ingested["documents"] += len(documents)
                    ingested["failed"] += len(report.failed)
            log(f"ingestion round {round_ + 1}/{rounds} done")
    finally:
        await store.close()
    return {"alone": alone, "ingestor": ingested, "tokens_mean": statistics.fmean(tokens), "tokens_max": max(tokens)}


def fast_directory(workdir: Path) -> Path:
    """A new directory in /dev/shm (memory) when there is one, else in ``workdir``."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="turnout-paths-store-", dir=shm if os.access(shm, os.W_OK) else workdir))


async def main(plan: Json) -> Json:
    started = time.perf_counter()
    before = rss_mb()
    embedder = Embedder(EmbeddingsConfig(backend=plan.get("backend", "auto")))
    await embedder.start()
    loaded = {"load_s": time.perf_counter() - started, "rss_before_mb": before, "rss_loaded_mb": rss_mb()}
    workdir = Path(plan["workdir"])
    store_dir = fast_directory(workdir)
    try:
        timings: Json = {}
        t = time.perf_counter()
        alone = await embedding_alone(embedder, plan["queries"])
        timings["embedding"] = time.perf_counter() - t
        t = time.perf_counter()
        ingest = await ingestion(embedder, workdir / "ingest-qdrant", plan["ingest_rounds"], plan["ingest_chunks"])
        timings["ingestion"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = await retrieval(embedder, store_dir, plan["sizes"], plan["queries"])
        timings["retrieval"] = time.perf_counter() - t
    finally:
        embedder.close()
        shutil.rmtree(store_dir, ignore_errors=True)
    return {
        "embedder": loaded,
        "embedding": alone,
        "ingestion": ingest,
        "retrieval": rows,
        "store_dir": str(store_dir.parent),
        "phase_seconds": timings,
    }


if __name__ == "__main__":
    # qdrant-client's local mode warns past 20,000 points: that size is what this measures
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    print(json.dumps(asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))))
