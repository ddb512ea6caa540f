"""Concurrent embeddings share model runs: the queue's rules on a recording encoder, then the real model
(the packaged MiniLM through sentence-transformers) giving batched requests the vectors single encodes give,
and spacing and case variants of a query one cache entry and one vector."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.config.model import EmbeddingsConfig
from gateway.embeddings import Embedder
from gateway.embeddings.batching import EncodeQueue, Vector


class Recorder:
    """An encoder that records each run's texts; ``gate`` holds a run until the test lets it go."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail: Exception | None = None

    def __call__(self, texts: list[str]) -> list[Vector]:
        self.runs.append(list(texts))
        self.started.set()
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return [[float(len(t))] for t in texts]


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1)


async def _while_busy(recorder: Recorder, queue: EncodeQueue) -> asyncio.Task[list[Vector]]:
    """A first request that holds the model, so what comes next waits for the following run."""
    recorder.gate.clear()
    first = asyncio.create_task(queue.urgent(["first"]))
    await asyncio.to_thread(recorder.started.wait, 10)
    return first


async def test_texts_arriving_while_the_model_runs_share_its_next_run(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    queue = EncodeQueue(recorder, pool, max_batch=4)
    first = await _while_busy(recorder, queue)
    waiting = [asyncio.create_task(queue.urgent([f"q{n}"])) for n in range(6)]
    await asyncio.sleep(0)  # every request is queued before the model is free
    recorder.gate.set()
    assert await first == [[5.0]]
    answers = await asyncio.gather(*waiting)
    assert answers == [[[2.0]]] * 6
    assert recorder.runs == [["first"], ["q0", "q1", "q2", "q3"], ["q4", "q5"]]  # at most max_batch a run


async def test_an_idle_model_takes_a_text_at_once(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    queue = EncodeQueue(recorder, pool, max_batch=32)
    for n in range(3):
        assert await queue.urgent([f"t{n}"]) == [[2.0]]
    assert recorder.runs == [["t0"], ["t1"], ["t2"]]


async def test_queries_go_before_waiting_bulk_texts_which_run_in_parts(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    queue = EncodeQueue(recorder, pool, max_batch=2)
    first = await _while_busy(recorder, queue)
    documents = asyncio.create_task(queue.bulk(["d1", "d2", "d3", "d4", "d5"], "documents"))
    await asyncio.sleep(0)
    query = asyncio.create_task(queue.urgent(["q"]))
    await asyncio.sleep(0)
    recorder.gate.set()
    await first
    assert await query == [[1.0]]
    assert await documents == [[2.0]] * 5
    assert recorder.runs == [["first"], ["q"], ["d1", "d2"], ["d3", "d4"], ["d5"]]


async def test_a_caller_that_leaves_takes_its_texts_out_of_the_next_run(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    queue = EncodeQueue(recorder, pool, max_batch=8)
    first = await _while_busy(recorder, queue)
    gone = asyncio.create_task(queue.urgent(["gone"]))
    kept = asyncio.create_task(queue.urgent(["kept"]))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.gate.set()
    await first
    assert await kept == [[4.0]]
    assert recorder.runs == [["first"], ["kept"]]


async def test_a_failed_run_fails_every_request_in_it_and_the_next_ones_run(pool: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    queue = EncodeQueue(recorder, pool, max_batch=8)
    first = await _while_busy(recorder, queue)
    together = [asyncio.create_task(queue.urgent([name])) for name in ("a", "b")]
    await asyncio.sleep(0)
    recorder.fail = RuntimeError("out of memory")
    recorder.gate.set()
    with pytest.raises(RuntimeError):
        await first
    for task in together:
        with pytest.raises(RuntimeError, match="out of memory"):
            await task
    recorder.fail = None
    assert await queue.urgent(["after"]) == [[5.0]]


# -- the real model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[Embedder]:
    model = Embedder(EmbeddingsConfig(cache_size=0))
    await model.start()
    yield model
    model.close()


QUESTIONS = [f"Where is my order number {n}? It was due {n} days ago." for n in range(24)]


async def test_concurrent_requests_get_the_vectors_single_encodes_give(embedder: Embedder) -> None:
    alone = [np.asarray(embedder.embed_many([q])[0]) for q in QUESTIONS]
    runs = embedder._queue.runs
    together = await asyncio.gather(*(embedder.embed_query(q) for q in QUESTIONS))
    assert embedder._queue.runs - runs < len(QUESTIONS) / 4  # shared runs, not one per request
    for single, batched in zip(alone, together, strict=True):
        assert float(np.dot(single, np.asarray(batched))) > 0.9999  # normalised: cosine of the two


async def test_spacing_and_case_variants_are_one_entry_and_one_vector() -> None:
    model = Embedder(EmbeddingsConfig(cache_size=16))
    await model.start()
    try:
        first = await model.embed_query("How do I reset my  password?")
        runs = model._queue.runs
        again = await model.embed_query("  how do i RESET my\npassword? ")
        assert model._queue.runs == runs  # served from the cache
        assert again == first
        direct = np.asarray(model.embed_many(["  how do i RESET my\npassword? "])[0])  # the model on the raw text
        assert float(np.dot(direct, np.asarray(first))) > 0.9999
        assert model.cache_key("Café  au LAIT") == "café au lait"
    finally:
        model.close()


async def test_cached_vectors_are_nothing_the_garbage_collector_walks() -> None:
    """Lists of floats in the cache made every full collection walk millions of items (a request's p99 went
    from 6 to 21 ms once the cache filled): the cache holds flat float32 arrays, returned as the same floats."""
    model = Embedder(EmbeddingsConfig(cache_size=8))
    await model.start()
    try:
        first = await model.embed_query("When does the ferry leave?")
        kept = model._cache[model.cache_key("When does the ferry leave?")]
        assert len(gc.get_referents(first)) == 384  # a list: the collector would visit every float
        assert len(gc.get_referents(kept)) <= 1  # the cached array: nothing of it but its type
        assert await model.embed_query("When does the ferry leave?") == first
    finally:
        model.close()
