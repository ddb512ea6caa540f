"""Adapter first-use cost and the gateway's added latency, against real vLLM on CPU, in one run.

Starts its own vLLM (tiny model, CPU) and gateway on free ports, then measures, interleaved so a noisy
machine treats both alike:
  * a base-model chat request sent straight to vLLM and through the gateway (added = difference);
  * an adapter's first request through the gateway (load + generate) against the same adapter's
    next request (generate only).
Prints a markdown table. Usage: .venv/bin/python bench/adapter_load.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO))

import localstack  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.stack import ADAPTERS, BASE, gateway_config  # noqa: E402
from tests.support.vllm_api import unload_all  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 4, "temperature": 0}


def timed_post(client: httpx.Client, url: str, model: str) -> float:
    start = time.perf_counter()
    response = client.post(url + "/v1/chat/completions", json={**BODY, "model": model})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    assets = localstack.ensure_assets()
    workdir = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    vllm = localstack.VllmServer(
        python=localstack.ensure_vllm_env(),
        model_dir=assets / "model",
        port=localstack.free_port(),
        served_model_name=BASE,
        log_path=workdir / "vllm.log",
    )
    with vllm:
        vllm.wait_ready(timeout=600)
        config = gateway_config(vllm.url, assets, max_resident=1)
        with GatewayProcess(config, workdir, localstack.free_port()) as gateway, httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm both paths
                timed_post(client, vllm.url, BASE)
                timed_post(client, gateway.url, BASE)
            direct, through = [], []
            for _ in range(args.rounds):
                direct.append(timed_post(client, vllm.url, BASE))
                through.append(timed_post(client, gateway.url, BASE))
            first, warm = [], []
            for i in range(max(4, args.rounds // 4)):
                adapter = ADAPTERS[i % 2]  # max_resident=1: each switch unloads the other adapter
                first.append(timed_post(client, gateway.url, adapter))
                warm.append(timed_post(client, gateway.url, adapter))
            unload_all(vllm.url)

    added = [t - d for d, t in zip(direct, through, strict=True)]
    print(f"# Adapter load and gateway overhead ({args.rounds} rounds, real vLLM on CPU, tiny model)\n")
    print("| measure | p50 ms | p90 ms |")
    print("|---|---|---|")
    print(f"| base chat, vLLM directly | {statistics.median(direct):.1f} | {pct(direct, 0.9):.1f} |")
    print(f"| base chat, through the gateway | {statistics.median(through):.1f} | {pct(through, 0.9):.1f} |")
    print(f"| added by the gateway (paired) | {statistics.median(added):.2f} | {pct(added, 0.9):.2f} |")
    print(f"| adapter first use (evict + load + generate) | {statistics.median(first):.1f} | {pct(first, 0.9):.1f} |")
    print(f"| adapter resident (generate) | {statistics.median(warm):.1f} | {pct(warm, 0.9):.1f} |")
    load_cost = statistics.median(f - w for f, w in zip(first, warm, strict=True))
    print(f"\nFirst use costs {load_cost:.1f} ms more than a resident adapter (median of paired differences).")


if __name__ == "__main__":
    main()
