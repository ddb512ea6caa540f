"""The load generator of the paths benchmark: ``bench/overhead``'s generator, with a body per request.

Runs as its own process on core 0 (``python bench/paths/traffic.py PLAN.json``, JSON results on stdout).
Everything the overhead benchmark's generator does holds here (interleaved blocks in rotation over the
targets, waiting for every server to be idle before each block, one aiohttp session on uvloop, ``wrk`` for
concurrency 32 when the plan names it): this class only changes which body each request carries. A path
whose text must be new takes the next index of its pool on every request (warm-up included), so no text
is ever sent twice in a run; ``wrk`` gets a file of ``wrk_bodies`` new bodies per block (``cycle.lua`` sends
them in turn), and the result says whether a block sent more requests than it had bodies.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "overhead"))

import load

from paths import workload

Json = dict[str, Any]


class PathsGenerator(load.Generator):
    def __init__(self, plan: Json, session: aiohttp.ClientSession) -> None:
        super().__init__(plan, session)
        self.paths = {p.name: p for p in workload.PATHS}
        self.fixed = {p.name: p.body() for p in workload.PATHS if p.pool is None}
        self.sent: dict[str, int] = {"semantic": 0, "kb": 0}  # the next index of each pool of new texts
        self.workdir = Path(plan["workdir"])

    def next_body(self, target: Json) -> bytes:
        path = self.paths[target["name"]]
        if path.pool is None:
            return self.fixed[path.name]
        index = self.sent[path.pool]
        self.sent[path.pool] += 1
        return path.body(index)

    async def request(self, target: Json) -> float:
        """One non-streaming request with this path's next body; its latency in ms (raises on anything but 200)."""
        body = self.next_body(target)
        start = time.perf_counter()
        async with self.session.post(target["url"] + load.CHAT, data=body, headers=self.headers[target["name"]]) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{target['name']} answered {r.status}")
        return (time.perf_counter() - start) * 1000

    async def wrk(self, target: Json, seconds: float, concurrency: int) -> Json:
        name = target["name"]
        new_texts = self.paths[name].pool is not None
        count = self.plan["wrk_bodies"] if new_texts else 1
        bodies = self.workdir / f"bodies-{name}.jsonl"
        bodies.write_bytes(b"".join(self.next_body(target) + b"\n" for _ in range(count)))
        row = await self.run_wrk(target, seconds, concurrency, {"WRK_BODIES": str(bodies)})
        # every request answered, and up to ``concurrency`` more sent, took a body of its own?
        return {**row, "texts_repeated": new_texts and row["requests"] + concurrency > count}

    async def warm(self) -> dict[str, str]:
        """Warm every path up (requests one at a time, then a second at concurrency 32); one that fails is
        left out (with why), except the upstream itself."""
        failed: dict[str, str] = {}
        for target in list(self.targets):
            try:
                for _ in range(self.plan["warmup"]):
                    await self.request(target)
                await self.closed_loop(target, 1, self.plan["concurrency"])
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                if target is self.targets[0]:
                    raise
                failed[target["name"]] = f"failed in the warm-up: {exc or type(exc).__name__}"
                self.targets.remove(target)
        load.log(f"warmed {', '.join(t['name'] for t in self.targets)}")
        return failed

    async def run(self) -> Json:
        failed = await self.warm()
        names = [t["name"] for t in self.targets]
        results: Json = {"c1": {n: {"ms": [], "errors": 0} for n in names}, "c32": {n: [] for n in names}}
        timings: Json = {}
        for phase, result in results.items():
            started = time.perf_counter()
            for round_ in range(self.plan["rounds"]):
                for target in self.targets:
                    await self.settle()
                    await self.block(phase, target, result)
                load.log(f"{phase}: round {round_ + 1}/{self.plan['rounds']} done")
            timings[phase] = time.perf_counter() - started
        return {**results, "failed": failed, "phase_seconds": timings, "new_texts": dict(self.sent)}


if __name__ == "__main__":
    load.cli(PathsGenerator)
