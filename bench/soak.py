"""A soak: one Turnout gateway at a fixed request rate for a minute, then its memory and open files.

    .venv/bin/python bench/soak.py [--rate 300] [--seconds 60] [--stream-every 5]    # make bench-soak

The fast upstream (``overhead/upstream.py``, core 0) and one gateway (core 1, as ``make bench-overhead``
starts it) run fresh; the load is open loop from this process (core 0): requests sent at fixed times
whatever the answers do, every ``--stream-every``-th one streamed (20 chunks). Before the load (after a
warm-up) and after it (once the gateway is idle again and its idle connections have closed), the
gateway's resident memory and open file descriptors are read from ``/proc``; memory is also sampled every
10 s. The goals: no error, memory growth under 10%, file descriptors back where they started. The table goes
to ``bench/soak-latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "overhead"))

from report import machine, verdict  # noqa: E402 - the overhead benchmark's helpers
from targets import UPSTREAM_CORE, pin, turnout, upstream  # noqa: E402

RSS_GROWTH = 0.10
# Readings are taken once every idle keep-alive connection has closed: the gateway's upstream pool closes
# them after 4 s, and server.keep_alive_s (5 s) those of clients; so what remains open is what leaked.
IDLE_S = 6.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def body(i: int, stream: bool) -> bytes:
    text = f"soak request {i}: say something short"
    stream_part = ',"stream":true,"stream_options":{"include_usage":true}' if stream else ""
    return (
        f'{{"model":"bench-model","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":16{stream_part}}}'
    ).encode()


async def soak(url: str, rate: float, seconds: float, stream_every: int, sample: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures: dict[str, int] = {}
    inflight: set[asyncio.Task[None]] = set()
    headers = {"content-type": "application/json"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            started = loop.time()
            try:
                async with session.post(url, data=body(i, i % stream_every == 0), headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        failures[str(answer.status)] = failures.get(str(answer.status), 0) + 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            latencies.append((loop.time() - started) * 1000)

        count, first = round(rate * seconds), loop.time() + 0.01
        next_sample = first + 10
        for i in range(count):
            due = first + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if loop.time() >= next_sample:
                sample()
                next_sample += 10
            task = asyncio.create_task(one(i))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(set(inflight), timeout=30)
    ordered = sorted(latencies)
    return {
        "sent": count,
        "ok": len(latencies),
        "failures": failures,
        "p50_ms": statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--stream-every", type=int, default=5)
    args = parser.parse_args()
    pin(UPSTREAM_CORE)
    workdir = Path(tempfile.mkdtemp(prefix="turnout-soak-"))
    up = upstream(workdir, chunks=20, gap_ms=1.0)
    up.start()
    gateway = turnout(workdir, up.url)
    try:
        up.wait_ready(time.monotonic() + 60)
        gateway.start()
        gateway.wait_ready(time.monotonic() + 120)
        assert gateway.process is not None
        pid = gateway.process.pid
        url = gateway.url + "/v1/chat/completions"
        asyncio.run(soak(url, args.rate, 3, args.stream_every, lambda: None))  # warm-up: pools, caches
        time.sleep(IDLE_S)  # every idle connection closed (the pool's 4 s, the server's 5 s), not a timing
        start_rss, start_fds = gateway.rss_mb(), fds(pid)
        samples: list[float] = []
        print(f"[soak] {args.rate:g}/s for {args.seconds:g} s; RSS {start_rss:.0f} MB, {start_fds} fds", flush=True)
        result = asyncio.run(
            soak(url, args.rate, args.seconds, args.stream_every, lambda: samples.append(gateway.rss_mb()))
        )
        time.sleep(IDLE_S)  # idle again, as before the load
        end_rss, end_fds = gateway.rss_mb(), fds(pid)
    finally:
        gateway.stop()
        up.stop()
    growth = end_rss / start_rss - 1
    errors = result["sent"] - result["ok"]
    lines = [
        "# Soak: one Turnout gateway at a fixed rate",
        "",
        f"Machine: {machine()}. Upstream and load on core 0, the gateway on core 1, one worker.",
        "",
        "| rate | seconds | sent | answered 200 | errors | p50 / p99 (ms) | RSS before → after (samples) "
        "| fds before → after |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.rate:g}/s (every {args.stream_every}th streamed) | {args.seconds:g} | {result['sent']:,} | "
        f"{result['ok']:,} | {errors} {result['failures'] or ''} | {result['p50_ms']:.2f} / {result['p99_ms']:.2f} | "
        f"{start_rss:.1f} → {end_rss:.1f} MB ({', '.join(f'{s:.0f}' for s in samples)}) | {start_fds} → {end_fds} |",
        "",
        "Goals:",
        "",
        f"- No errors: {errors}: **{verdict(errors == 0)}**",
        f"- Resident memory growth under {RSS_GROWTH:.0%}: {growth:+.1%}: **{verdict(growth < RSS_GROWTH)}**",
        f"- File descriptors back to the start: {start_fds} → {end_fds}: **{verdict(end_fds <= start_fds)}**",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    (HERE / "soak-latest.md").write_text(table)


if __name__ == "__main__":
    main()
