"""Ingestion throughput and retrieval latency over 10,000 chunks in the embedded Qdrant store (qdrant-edge).

Builds a synthetic corpus (deterministic sentences about many topics), ingests it through the same
Ingestor the gateway uses (chunking with the model's tokenizer, batched embedding, the store's batched
writes) into embedded storage on disk, then times retrieval as a request pays it: one query embedding
(uncached) plus one search filtered to the caller's tenant and the shared documents. Prints a markdown
table with the embedding's share of retrieval time. Nothing is asserted.

Usage: .venv/bin/python bench/rag.py [--chunks 10000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.model import ChunkingConfig, EmbeddingsConfig, RagStoreConfig
from gateway.embeddings import Embedder
from gateway.rag.documents import make_document
from gateway.rag.ingest import Ingestor
from gateway.rag.retrieval import retrieve
from gateway.rag.store import VectorStore

WORDS = [
    "harbour",
    "office",
    "warranty",
    "kettle",
    "toaster",
    "refund",
    "parcel",
    "invoice",
    "shipping",
    "customs",
    "pier",
    "tide",
    "lighthouse",
    "ferry",
    "schedule",
    "ticket",
    "luggage",
    "cabin",
    "storm",
    "engine",
    "crane",
    "cargo",
    "container",
    "berth",
    "anchor",
]


def sentence(rng: random.Random, i: int) -> str:
    picked = rng.sample(WORDS, 6)
    a, b, c, d, e, f = picked
    return f"Note {i}: the {a} near the {b} handles {c} and {d} for {e} {f}."


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(chunks: int, queries: int) -> None:
    rng = random.Random(7)
    embedder = Embedder(EmbeddingsConfig(cache_size=0))
    await embedder.start()
    workdir = Path(tempfile.mkdtemp(prefix="turnout-bench-rag-"))
    store = VectorStore.open(RagStoreConfig(path=workdir / "qdrant"), embedder.dimension)
    # ~3 sentences per document and chunks of ~64 tokens: one chunk per document
    documents = [
        make_document(
            id=f"doc-{i}",
            text=" ".join(sentence(rng, i * 3 + k) for k in range(3)),
            title=f"Doc {i}",
            source=f"bench/{i}",
        )
        for i in range(chunks)
    ]
    ingestor = Ingestor(store, embedder, ChunkingConfig(max_tokens=96, overlap_tokens=8))
    started = time.perf_counter()
    report = await ingestor.ingest("bench", "", documents)
    ingest_s = time.perf_counter() - started

    embed_ms, search_ms, total_ms = [], [], []
    for q in range(queries):
        question = f"Which {rng.choice(WORDS)} handles {rng.choice(WORDS)} at the {rng.choice(WORDS)}? ({q})"
        t0 = time.perf_counter()
        vector = await embedder.embed_query(question)
        t1 = time.perf_counter()
        await retrieve(store, "bench", "tenant-x", vector, 4, 0.0)
        t2 = time.perf_counter()
        embed_ms.append((t1 - t0) * 1000)
        search_ms.append((t2 - t1) * 1000)
        total_ms.append((t2 - t0) * 1000)
    await store.close()
    embedder.close()

    print(f"# Retrieval over {report.chunks} chunks, embedded Qdrant on disk (one run)\n")
    print(
        f"Ingestion: {len(documents)} documents, {report.chunks} chunks in {ingest_s:.1f} s = "
        f"{report.chunks / ingest_s:.0f} chunks/s (chunking, embedding and storing).\n"
    )
    print("| per query | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| embed the question | {statistics.median(embed_ms):.1f} | {pct(embed_ms, 0.99):.1f} |")
    print(f"| search (tenant + shared documents) | {statistics.median(search_ms):.1f} | {pct(search_ms, 0.99):.1f} |")
    print(f"| retrieval total | {statistics.median(total_ms):.1f} | {pct(total_ms, 0.99):.1f} |")
    share = statistics.median(e / t for e, t in zip(embed_ms, total_ms, strict=True))
    print(f"\nThe embedding's share of retrieval time: {share:.0%} (median over queries).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.chunks, args.queries))
