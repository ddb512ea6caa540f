"""The primary answer's latency with shadow arms on and off, side by side in one run.

    .venv/bin/python bench/shadows.py [--rounds 5] [--block 100]    # make bench-shadows

The fast upstream (``overhead/upstream.py``, core 0) and two gateways on core 1, started fresh: one whose
policy sends every request (``sample: 1.0``) to a shadow arm as well (the base model with a long system
prompt, so the arm costs a real second call and an agreement embedding on the same core), one without.
The load is this process (core 0): at c=1, blocks of ``--block`` sequential requests to each gateway in
turn, ``--rounds`` times, after a warm-up; the shadow arms run in the gateway's background meanwhile, on
the core the primary requests need. Printed: the primary's p50 and p99 per gateway and their differences,
the rows the shadowed gateway recorded, the drops. The goal: the primary not slower beyond noise, that is
p50 within 0.5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "overhead"))

from load import pct  # noqa: E402
from report import machine  # noqa: E402 - the overhead benchmark's helpers
from targets import UPSTREAM_CORE, Server, pin, turnout, upstream  # noqa: E402

P50_GOAL_MS = 0.5
BODY = (
    b'{"model":"bot","messages":[{"role":"user","content":"Where is my parcel? It should have come."}],"max_tokens":16}'
)


def gateway(workdir: Path, upstream_url: str, name: str, shadows: bool) -> Server:
    policy: dict[str, Any] = {"default": "base"}
    if shadows:
        long_prompt = "You are the support desk of an online shop. " * 40
        policy["shadow"] = {"targets": [{"base": True, "system_prompt": long_prompt}], "sample": 1.0}
    shadows_config = {"store": str(workdir / f"{name}.sqlite")}
    return turnout(workdir, upstream_url, name, policies={"bot": policy}, shadows=shadows_config)


async def block(session: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    found = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as answer:
            await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}")
        found.append((time.perf_counter() - started) * 1000)
    return found


async def measure(urls: dict[str, str], rounds: int, count: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            await block(session, url, 50)  # warm-up: pools, the embedding model's first runs
        for _ in range(rounds):
            for name, url in urls.items():
                latencies[name] += await block(session, url, count)
    return latencies


def recorded(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return int(db.execute('SELECT count(*) FROM arms WHERE "primary" = 0').fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args()
    pin(UPSTREAM_CORE)
    workdir = Path(tempfile.mkdtemp(prefix="turnout-shadows-"))
    up = upstream(workdir, chunks=20, gap_ms=1.0)
    servers: dict[str, Server] = {}
    up.start()
    try:
        up.wait_ready(time.monotonic() + 60)
        servers = {"off": gateway(workdir, up.url, "off", False), "on": gateway(workdir, up.url, "on", True)}
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready(time.monotonic() + 180)
        urls = {name: server.url + "/v1/chat/completions" for name, server in servers.items()}
        latencies = asyncio.run(measure(urls, args.rounds, args.block))
        time.sleep(2)  # the last shadow calls finish before their rows are counted (not a timing assertion)
        shadow_rows = recorded(workdir / "on.sqlite")
    finally:
        for server in servers.values():
            server.stop()
        up.stop()
    off, on = latencies["off"], latencies["on"]
    p50 = statistics.median(on) - statistics.median(off)
    verdict = "PASS" if p50 <= P50_GOAL_MS else "MISS"
    print(
        "\n".join(
            [
                "# Primary latency with shadow arms on and off",
                "",
                f"Machine: {machine()}. Upstream and load on core 0, both gateways on core 1; c=1, "
                f"{args.rounds} rounds of {args.block} requests per gateway, interleaved.",
                "",
                "| gateway | requests | p50 (ms) | p99 (ms) |",
                "|---|---|---|---|",
                f"| shadows off | {len(off):,} | {statistics.median(off):.2f} | {pct(off, 0.99):.2f} |",
                f"| shadows on (every request, one arm) | {len(on):,} | {statistics.median(on):.2f} "
                f"| {pct(on, 0.99):.2f} |",
                "",
                f"- Shadow rows recorded: {shadow_rows:,} of {len(on) + 50:,} requests (the rest dropped or queued).",
                f"- Primary p50 with shadows on within {P50_GOAL_MS} ms of off: {p50:+.2f} ms: **{verdict}**",
                f"- p99 difference: {pct(on, 0.99) - pct(off, 0.99):+.2f} ms",
            ]
        )
    )


if __name__ == "__main__":
    main()
