"""Residency-first replica choice against round-robin, on two real vLLM replicas, in one run.

Starts two vLLM CPU servers (tiny model, ``--max-loras 2``: two adapter slots each) with a recording proxy in
front of each, then sends the same seeded mixed workload (four adapters, more than one replica's slots, and
the base model; skewed as real traffic is) through a gateway that chooses replicas

* by residency, then load (the gateway's rule, ``gateway.fleet.placement.ResidencyFirst``), and
* round-robin, wherever the adapter is (``RoundRobin``: what a router without LoRA affinity does),

alternating which goes first over the rounds so a drifting machine treats both alike. Every phase starts from
replicas with nothing loaded and a fresh gateway. Prints, per placement: requests, errors, latency p50/p90/p99,
and per replica the requests it served and the adapter loads and unloads it got (counted by the proxies).
Nothing is asserted.

The round-robin gateway is the same app with another placement passed to ``create_asgi_app`` (the seam tests
use for resolvers): round-robin is a baseline to measure against, not a choice to offer in the configuration.
This script runs those gateways itself (``--serve``), as ``turnout serve`` would.

Usage: .venv/bin/python bench/fleet.py [--rounds 3] [--requests 160] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO))

import localstack  # noqa: E402

from tests.support.recorder import RecordingProxy  # noqa: E402
from tests.support.stack import BASE, MAX_LORA_RANK  # noqa: E402
from tests.support.vllm_api import unload_all  # noqa: E402

# Skewed as real traffic is: one hot adapter, a long tail, some base-model requests.
MIX = {"formal": 35, "terse": 20, "pirate": 15, "formal-b": 10, BASE: 20}
PLACEMENTS = ("residency", "round-robin")
SLOTS = 2  # vLLM's --max-loras (and --max-cpu-loras) on each replica: the gateway's max_resident


def serve(config_path: str, placement: str, port: int) -> None:
    """Run a gateway for ``config_path`` with the given placement (the child process of a phase)."""
    import logging

    import uvicorn

    from gateway.app import create_asgi_app
    from gateway.config import load_config
    from gateway.fleet.placement import ResidencyFirst, RoundRobin

    logging.basicConfig(level="WARNING")
    config = load_config(config_path)
    chosen = RoundRobin() if placement == "round-robin" else ResidencyFirst()
    app = create_asgi_app(config, Path(config_path), placement=chosen)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


@dataclass
class Phase:
    placement: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    replicas: Counter[str] = field(default_factory=Counter)
    loads: dict[str, int] = field(default_factory=dict)
    unloads: dict[str, int] = field(default_factory=dict)


def workload(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(list(MIX), weights=list(MIX.values()), k=count)


async def drive(url: str, models: list[str], concurrency: int, phase: Phase) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for model in models:
        queue.put_nowait(model)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            model = queue.get_nowait()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": 16,
                "temperature": 0,
            }
            started = time.perf_counter()
            response = await client.post(url + "/v1/chat/completions", json=body)
            phase.latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                phase.errors += 1
            phase.replicas[response.headers.get("x-turnout-replica", "-")] += 1

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def run_phase(
    placement: str,
    config: dict[str, object],
    workdir: Path,
    proxies: list[RecordingProxy],
    models: list[str],
    args: argparse.Namespace,
) -> Phase:
    for proxy in proxies:
        unload_all(proxy.target)
        proxy.clear()
    port = localstack.free_port()
    path = workdir / f"gateway-{placement}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"gateway-{placement}.log"
    gateway = localstack.start_process_group(
        [sys.executable, __file__, "--serve", str(path), "--placement", placement, "--port", str(port)], log, cwd=REPO
    )
    phase = Phase(placement)
    try:
        localstack.wait_http_ok(f"http://127.0.0.1:{port}/health", 60, proc=gateway, log_path=log, what="gateway")
        asyncio.run(drive(f"http://127.0.0.1:{port}", models, args.concurrency, phase))
    finally:
        localstack.stop_process_group(gateway)
    for proxy in proxies:
        name = proxy.url.partition("://")[2]
        phase.loads[name] = len(proxy.loads())
        phase.unloads[name] = len(proxy.unloads())
    return phase


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=160, help="per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--placement", default="residency", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.placement, args.port)
        return

    assets = localstack.ensure_assets()
    workdir = Path(tempfile.mkdtemp(prefix="turnout-bench-fleet-"))
    adapters = workdir / "adapters"
    for name in ("formal", "terse", "pirate"):
        shutil.copytree(assets / "adapters" / name, adapters / name)
    shutil.copytree(assets / "adapters" / "formal", adapters / "formal-b")  # same weights, its own name
    python = localstack.ensure_vllm_env()
    servers = [
        localstack.VllmServer(
            python,
            assets / "model",
            localstack.free_port(),
            BASE,
            workdir / f"vllm-{n}.log",
            max_lora_rank=MAX_LORA_RANK,
            max_loras=SLOTS,
        )
        for n in range(2)
    ]
    proxies: list[RecordingProxy] = []
    started = time.monotonic()
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout=600)
        print(f"two vLLM replicas ready after {time.monotonic() - started:.0f} s", file=sys.stderr)
        proxies = [RecordingProxy(server.url) for server in servers]
        for proxy in proxies:
            proxy.start()
        config = {
            "server": {"log_level": "warning"},
            "vllm": {
                "replicas": [p.url for p in proxies],
                "model": BASE,
                "max_lora_rank": MAX_LORA_RANK,
                "max_resident": SLOTS,
            },
            "base_model": {"path": str(assets / "model"), "aliases": ["turnout/tiny-llama"]},
            "adapters": {name: {"path": str(adapters / name)} for name in MIX if name != BASE},
        }
        results: dict[str, list[Phase]] = {p: [] for p in PLACEMENTS}
        for round_ in range(args.rounds):
            models = workload(args.requests, seed=round_)
            order = PLACEMENTS if round_ % 2 == 0 else PLACEMENTS[::-1]
            for placement in order:
                phase = run_phase(placement, config, workdir, proxies, models, args)
                results[placement].append(phase)
                print(f"round {round_ + 1}: {placement} done", file=sys.stderr)
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in servers:
            server.stop()
    report(results, args, [p.url.partition("://")[2] for p in proxies])


def report(results: dict[str, list[Phase]], args: argparse.Namespace, names: list[str]) -> None:
    mix = ", ".join(f"{model} {weight}%" for model, weight in MIX.items())
    print(f"# Replica choice: residency first vs round-robin ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n")
    print(
        f"Two vLLM CPU replicas (tiny model, {SLOTS} adapter slots each), four adapters and the base model "
        f"({mix}), {args.requests} chat requests of 16 tokens per phase at concurrency {args.concurrency}, "
        f"{args.rounds} rounds alternating which placement goes first; each phase starts with nothing loaded.\n"
    )
    columns = ["placement", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "requests", "loads", "unloads"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for placement, phases in results.items():
        latencies = [latency for phase in phases for latency in phase.latencies]
        errors = sum(phase.errors for phase in phases)
        served = Counter[str]()
        for phase in phases:
            served.update(phase.replicas)

        def per_replica(counts: list[dict[str, int]] | list[Counter[str]]) -> str:
            return " / ".join(str(sum(c.get(name, 0) for c in counts)) for name in names)

        print(
            f"| {placement} | {len(latencies)} | {errors} | {statistics.median(latencies):.0f} | "
            f"{pct(latencies, 0.9):.0f} | {pct(latencies, 0.99):.0f} | {per_replica([served])} | "
            f"{per_replica([p.loads for p in phases])} | {per_replica([p.unloads for p in phases])} |"
        )
    print("\nThe last three columns are per replica (the first / the second), summed over the rounds.")


if __name__ == "__main__":
    main()
