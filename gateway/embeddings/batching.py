"""Many callers, one model: texts waiting while the model runs go together in its next run.

The model runs on one worker thread. Batching pays on a CPU (one short query alone costs about as much as
four in one run of 32), so instead of queueing one run per request, :class:`EncodeQueue` keeps one runner:
when the model is idle a text goes at once (no wait at low load), and texts that arrive while it is busy
wait together for its next run, up to ``max_batch`` of them. The collection window is thus the model's own
run: bounded in time by one run and in size by ``max_batch``, and never a timer.

Two lanes: **urgent** texts (a request's routing or retrieval query, which a client is waiting on) always go
first; **bulk** texts (``POST /v1/embeddings``, document chunks) are cut into runs of ``max_batch`` so that an
ingestion of thousands of chunks lets the queries through between its runs. The event loop never waits on the
model: runs go to the worker thread, and each caller awaits its own future. A caller that leaves before its
run starts takes its texts out of it.

May import: nothing of the gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

Vector = list[float]
Encode = Callable[[list[str]], list[Vector]]
Observe = Callable[[str, float], None]


@dataclass(slots=True)
class _Job:
    texts: list[str]
    kind: str
    done: asyncio.Future[list[Vector]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EncodeQueue:
    def __init__(self, encode: Encode, pool: Executor, max_batch: int, observe: Observe | None = None) -> None:
        self._encode = encode
        self._pool = pool
        self._max = max(1, max_batch)
        self._observe = observe
        self._urgent: deque[_Job] = deque()
        self._bulk: deque[_Job] = deque()
        self._runner: asyncio.Task[None] | None = None
        self.runs = 0  # model runs so far (tests and benchmarks read it)

    async def urgent(self, texts: Sequence[str], kind: str = "query") -> list[Vector]:
        """Vectors of ``texts`` (distinct), in order, from the next run the model makes."""
        return await self._wait([self._put(self._urgent, list(texts), kind)])

    async def bulk(self, texts: Sequence[str], kind: str) -> list[Vector]:
        """Vectors of ``texts``, in order, in runs of at most ``max_batch`` after any waiting urgent texts."""
        step = self._max
        jobs = [self._put(self._bulk, list(texts[i : i + step]), kind) for i in range(0, len(texts), step)]
        return await self._wait(jobs)

    def _put(self, lane: deque[_Job], texts: list[str], kind: str) -> _Job:
        job = _Job(texts, kind)
        lane.append(job)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="embedding-runs")
        return job

    async def _wait(self, jobs: list[_Job]) -> list[Vector]:
        try:
            parts = [await job.done for job in jobs]
        except BaseException:
            for job in jobs:
                job.done.cancel()  # not run yet: taken out of its run; run already: nothing lost
            raise
        return [vector for part in parts for vector in part]

    def _take(self) -> list[_Job]:
        """The next run's jobs: waiting urgent ones up to ``max_batch`` texts (at least one job), else one
        bulk part. Jobs whose caller left are dropped."""
        for lane in (self._urgent, self._bulk):
            while lane and lane[0].done.done():
                lane.popleft()
        if self._urgent:
            taken = [self._urgent.popleft()]
            size = len(taken[0].texts)
            while self._urgent and size + len(self._urgent[0].texts) <= self._max:
                job = self._urgent.popleft()
                if not job.done.done():
                    taken.append(job)
                    size += len(job.texts)
            return taken
        return [self._bulk.popleft()] if self._bulk else []

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while jobs := self._take():
            texts = list(dict.fromkeys(t for job in jobs for t in job.texts))
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._pool, self._encode, texts)
            except Exception as exc:
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(exc)
                continue
            finally:
                self.runs += 1
            if self._observe is not None:
                self._observe(jobs[0].kind, time.perf_counter() - started)
            found = dict(zip(texts, vectors, strict=True))
            for job in jobs:
                if not job.done.done():
                    job.done.set_result([found[t] for t in job.texts])


__all__ = ["EncodeQueue", "Vector"]
