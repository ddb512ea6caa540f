"""The load generator of the overhead benchmark: one process, pinned to core 0, measuring every target.

Reads a plan (JSON, the file named on the command line), measures the targets interleaved — each phase
is small blocks in rotation over the targets, repeated for several rounds, so a machine whose speed drifts
treats them alike — and prints the raw results as one JSON object on stdout (progress goes to stderr):

* ``c1``: sequential non-streaming requests, each timed from send to the last byte read;
* ``stream``: sequential streaming requests: when the first content chunk arrived and the mean gap between
  content chunks (chunks are found by the upstream's marker word, whatever the gateway re-serialised);
* ``c32``: closed loop at concurrency 32 for a fixed time, by ``wrk`` when the plan names it, else here;
* ``ladder``: open loop at fixed rates, each target climbing until a step fails (see ``ladder``).

Before each block the generator waits until every server is idle again, so one target's leftovers never fall
into the next one's block. A target that fails its warm-up is left out (with why); a request that fails
later is counted as an error. One aiohttp session (unlimited pooled keep-alive connections) on uvloop serves
every request.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import UPSTREAM_CORE, cpu_seconds, pin

MARK = b"bench-tok"
CHAT = "/v1/chat/completions"
Json = dict[str, Any]


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Generator:
    def __init__(self, plan: Json, session: aiohttp.ClientSession) -> None:
        self.plan = plan
        self.session = session
        self.targets: list[Json] = plan["targets"]
        self.body = json.dumps(plan["body"]).encode()
        self.stream_body = json.dumps({**plan["body"], "stream": True, "stream_options": {"include_usage": True}})
        self.headers = {t["name"]: {"content-type": "application/json", **t["headers"]} for t in self.targets}

    async def request(self, target: Json) -> float:
        """One non-streaming request; its latency in ms (raises on anything but 200)."""
        start = time.perf_counter()
        async with self.session.post(target["url"] + CHAT, data=self.body, headers=self.headers[target["name"]]) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{target['name']} answered {r.status}")
        return (time.perf_counter() - start) * 1000

    async def stream(self, target: Json) -> tuple[float, float, int]:
        """One streaming request: ms to the first content chunk, mean ms between content chunks, chunks."""
        start = time.perf_counter()
        arrivals: list[float] = []
        received = b""
        url, headers = target["url"] + CHAT, self.headers[target["name"]]
        async with self.session.post(url, data=self.stream_body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"{target['name']} answered {r.status} to a stream")
            async for data in r.content.iter_any():
                now = time.perf_counter()
                received += data  # a marker may straddle two reads: count in everything so far
                arrivals += [now] * (received.count(MARK) - len(arrivals))
        if len(arrivals) < 2:
            raise RuntimeError(f"{target['name']} streamed {len(arrivals)} content chunks")
        gap = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
        return (arrivals[0] - start) * 1000, gap * 1000, len(arrivals)

    async def closed_loop(self, target: Json, seconds: float, concurrency: int) -> Json:
        if self.plan.get("wrk"):
            return await self.wrk(target, seconds, concurrency)
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    latencies.append(await self.request(target))
                except (aiohttp.ClientError, RuntimeError, TimeoutError):
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"requests": len(latencies), "seconds": elapsed, "p99_ms": pct(latencies, 0.99), "errors": errors}

    async def wrk(self, target: Json, seconds: float, concurrency: int) -> Json:
        return await self.run_wrk(target, seconds, concurrency, {"WRK_BODY": self.body.decode()})

    async def run_wrk(self, target: Json, seconds: float, concurrency: int, env: dict[str, str]) -> Json:
        """One closed-loop block by wrk with the plan's Lua script (told ``env``): requests, seconds, p99, errors."""
        env = {**os.environ, **env, "WRK_AUTH": target["headers"].get("Authorization", "")}
        argv = [self.plan["wrk"], "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
        argv += ["-s", self.plan["wrk_script"], target["url"] + CHAT]
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        for line in out.decode().splitlines():
            if line.startswith("WRK "):
                row = json.loads(line[4:])
                return {
                    "requests": row["requests"],
                    "seconds": row["duration_us"] / 1e6,
                    "p99_ms": row["p99_us"] / 1000,
                    "errors": row["errors"],
                }
        raise RuntimeError(f"wrk printed no result for {target['name']}:\n{out.decode()}")

    async def open_loop(self, target: Json, rate: float) -> Json:
        """Requests sent at fixed times, whatever the answers do; latency is timed from each actual send.

        Sends stop early when more than ``max_inflight`` requests are waiting (the target is overloaded);
        ``lag`` is how late the generator itself sent, which tells when it, not the target, is the limit.
        """
        plan = self.plan["ladder"]
        count = max(plan["min_requests"], round(rate * plan["seconds"]))
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        lags: list[float] = []
        errors = 0
        inflight: set[asyncio.Task[None]] = set()

        async def one(due: float) -> None:
            nonlocal errors
            lags.append((loop.time() - due) * 1000)
            try:
                latencies.append(await self.request(target))
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                errors += 1

        overloaded, sent = False, 0
        first = loop.time() + 0.005
        for i in range(count):
            due = first + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if len(inflight) > plan["max_inflight"]:
                overloaded = True
                break
            task = asyncio.create_task(one(due))
            sent += 1
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        sent_for = loop.time() - first
        if inflight:
            _, pending = await asyncio.wait(set(inflight), timeout=plan["drain_s"])
            for task in pending:
                task.cancel()
            errors += len(pending)
        return {
            "rate": rate,
            "sent": sent,
            "achieved_rate": (sent - 1) / sent_for if sent > 1 and sent_for > 0 else rate,
            "ok": len(latencies),
            "errors": errors,
            "overloaded": overloaded,
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "lag_p99_ms": pct(lags, 0.99),
        }

    async def settle(self) -> None:
        """Wait until every server is idle again, so that one target's leftovers (requests still draining, a
        gateway's own background work after a burst) never fall into the next target's block."""
        window, idle_cpu_s = 0.1, 0.01  # at most 10% of a core over the window (/proc counts 10 ms ticks)
        deadline = time.perf_counter() + 5
        last = sum(cpu_seconds(pid) for pid in self.plan["pids"])
        while time.perf_counter() < deadline:
            await asyncio.sleep(window)
            now = sum(cpu_seconds(pid) for pid in self.plan["pids"])
            if now - last <= idle_cpu_s:
                return
            last = now

    async def warm(self) -> dict[str, str]:
        """Warm every target up; one that fails here is left out (with why), except the upstream itself."""
        failed: dict[str, str] = {}
        for target in list(self.targets):
            try:
                for _ in range(self.plan["warmup"]):
                    await self.request(target)
                for _ in range(3):
                    await self.stream(target)
                await self.closed_loop(target, 1, self.plan["concurrency"])
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                if target is self.targets[0]:
                    raise
                failed[target["name"]] = f"failed in the warm-up: {exc or type(exc).__name__}"
                self.targets.remove(target)
        log(f"warmed {', '.join(t['name'] for t in self.targets)}")
        return failed

    async def block(self, phase: str, target: Json, result: Json) -> None:
        """One block of one phase for one target; a failed request is counted, not fatal."""
        plan, name = self.plan, target["name"]
        if phase == "c32":
            result[name].append(await self.closed_loop(target, plan["c32_seconds"], plan["concurrency"]))
            return
        for _ in range(plan["c1_requests"] if phase == "c1" else plan["stream_requests"]):
            try:
                if phase == "c1":
                    result[name]["ms"].append(await self.request(target))
                else:
                    ttft, gap, chunks = await self.stream(target)
                    result[name]["ttft_ms"].append(ttft)
                    result[name]["gap_ms"].append(gap)
                    result[name]["chunks"].append(chunks)
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                result[name]["errors"] += 1

    async def run(self) -> Json:
        failed = await self.warm()
        names = [t["name"] for t in self.targets]
        results: Json = {
            "c1": {n: {"ms": [], "errors": 0} for n in names},
            "stream": {n: {"ttft_ms": [], "gap_ms": [], "chunks": [], "errors": 0} for n in names},
            "c32": {n: [] for n in names},
        }
        timings: Json = {}
        for phase, result in results.items():
            started = time.perf_counter()
            for round_ in range(self.plan["rounds"]):
                for target in self.targets:
                    await self.settle()
                    await self.block(phase, target, result)
                log(f"{phase}: round {round_ + 1}/{self.plan['rounds']} done")
            timings[phase] = time.perf_counter() - started
        started = time.perf_counter()
        results["ladder"] = await self.ladder()
        timings["ladder"] = time.perf_counter() - started
        return {**results, "failed": failed, "phase_seconds": timings}

    async def ladder(self) -> Json:
        """Each rate in turn, the upstream directly first, then each target still climbing, in rotation.

        A target's step holds when every request answered 200, it never became overloaded, and its p99 is
        at most ``limit_ms`` above the upstream's at that rate. A failed step is measured once more; a target
        stops climbing when it fails again. When the generator cannot send at a rate
        itself (the direct step misses it), the ladder ends.
        """
        plan = self.plan["ladder"]
        direct, *others = self.targets
        steps: Json = {t["name"]: [] for t in self.targets}
        climbing = list(others)
        for rate in plan["rates"]:
            base = await self.generator_step(direct, rate)
            steps[direct["name"]].append(base)
            if not base["holds"]:
                log(f"ladder: the generator cannot hold {rate}/s against the upstream directly; stopping")
                break
            for target in list(climbing):
                step = await self.ladder_step(target, rate, base)
                if not step["holds"]:  # one hiccup must not end a climb: measured again, once
                    step = {**await self.ladder_step(target, rate, base), "retried": True}
                steps[target["name"]].append(step)
                if not step["holds"]:
                    climbing.remove(target)
            log(f"ladder: {rate}/s done, still climbing: {', '.join(t['name'] for t in climbing) or 'none'}")
            if not climbing:
                break
        return steps

    async def generator_step(self, direct: Json, rate: float) -> Json:
        """The upstream directly at ``rate``: does the generator send on time? A second try before it is 'no'."""
        for attempt in (1, 2):
            await self.settle()
            base = await self.open_loop(direct, rate)
            base["holds"] = generator_keeps_up(base, rate, self.plan["ladder"]["late_ms"])
            base["retried"] = attempt == 2
            if base["holds"]:
                break
        return base

    async def ladder_step(self, target: Json, rate: float, base: Json) -> Json:
        await self.settle()
        step = await self.open_loop(target, rate)
        step["added_p99_ms"] = step["p99_ms"] - base["p99_ms"]
        limit = self.plan["ladder"]["limit_ms"]
        step["holds"] = step["errors"] == 0 and not step["overloaded"] and step["added_p99_ms"] <= limit
        return step


def generator_keeps_up(step: Json, rate: float, late_ms: float) -> bool:
    return bool(
        step["errors"] == 0
        and not step["overloaded"]
        and step["achieved_rate"] >= 0.95 * rate
        and step["lag_p99_ms"] <= late_ms
    )


async def main(plan: Json, generator: type[Generator] = Generator) -> Json:
    timeout = aiohttp.ClientTimeout(total=plan.get("timeout_s", 30))
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        return await generator(plan, session).run()


def cli(generator: type[Generator] = Generator) -> None:
    """Run ``generator`` over the plan file named on the command line, on the load generator's core; print the
    results as JSON."""
    pin(UPSTREAM_CORE)
    plan = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(uvloop.run(main(plan, generator))))


if __name__ == "__main__":
    cli()
