"""What each gateway adds per request, side by side, in one run: ``make bench`` runs this first.

Starts, fresh and pinned, a fast benchmark upstream (core 0), the bare pass-through, Turnout and LiteLLM
proxy (each on core 1, one worker), runs the load generator (core 0) once over all of them, interleaved,
reads each gateway's resident memory after the load, stops everything, and prints a markdown table (also
written to ``bench/overhead/latest.md``). A gateway that cannot be built or started is reported as not
measured; the others are measured all the same.

Usage: .venv/bin/python bench/overhead/run.py [--rounds 5] [--quick] [--no-litellm]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import targets
from targets import Server

HERE = Path(__file__).resolve().parent
BODY = {"model": targets.MODEL, "messages": [{"role": "user", "content": "Hello, how are you?"}], "max_tokens": 16}
RATES = [10, 25, 50, 100, 200, 400, 800, 1200, 1600, 2000]


def log(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


def build_plan(args: argparse.Namespace, servers: list[Server]) -> dict[str, Any]:
    quick = args.quick
    wrk = None if args.python_load else shutil.which("wrk")
    return {
        "targets": [{"name": s.name, "url": s.url, "headers": s.headers} for s in servers],
        "pids": [pid for s in servers for pid in s.pids()],
        "body": BODY,
        "rounds": 2 if quick else args.rounds,
        "warmup": 50 if quick else 200,
        "c1_requests": 50 if quick else 200,
        "stream_requests": 4 if quick else 12,
        "concurrency": 32,
        "c32_seconds": 1.0 if quick else 2.0,
        "wrk": wrk,
        "wrk_script": str(HERE / "post.lua"),
        "ladder": {
            "rates": RATES,
            "seconds": 1.0 if quick else 2.0,
            "min_requests": 10 if quick else 30,
            "limit_ms": 10.0,
            "max_inflight": 256,
            "drain_s": 10.0,
            "late_ms": 5.0,  # the generator's own lateness (p99) beyond which it, not the target, is the limit
        },
    }


def start_gateways(candidates: list[Server], skipped: dict[str, str]) -> list[Server]:
    """Start every gateway at once, then wait for each; one that fails to start is skipped, not fatal."""
    started: list[Server] = []
    for server in candidates:
        try:
            server.start()
            started.append(server)
        except OSError as exc:
            skipped[server.name] = f"could not start: {exc}"
    ready: list[Server] = []
    deadline = time.monotonic() + 180
    for server in started:
        try:
            server.wait_ready(deadline)
            ready.append(server)
            log(f"{server.name} ready on {server.url}")
        except RuntimeError as exc:
            last = (str(exc).strip().splitlines() or ["?"])[-1][:160]
            skipped[server.name] = f"did not start: {last}; log {server.log_path}"
            server.stop()
    return ready


def run_load(plan: dict[str, Any], workdir: Path) -> dict[str, Any]:
    path = workdir / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, str(HERE / "load.py"), str(path)], stdout=subprocess.PIPE, timeout=1200, check=True
    )
    (workdir / "raw.json").write_bytes(done.stdout)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def our_cpu(servers: list[Server]) -> float:
    """CPU seconds used by the servers, this process, and the children it has waited for (the generator)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(s.cpu_seconds() for s in servers) + own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each phase")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (figures too noisy to quote)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM proxy out")
    parser.add_argument("--python-load", action="store_true", help="c=32 by the Python generator even with wrk")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="upstream's pause between content chunks")
    parser.add_argument("--out", type=Path, default=HERE / "latest.md", help="where the table is also written")
    args = parser.parse_args()
    began = time.monotonic()
    targets.pin(targets.UPSTREAM_CORE)  # this process only waits; keep even that off the gateways' core
    workdir = Path(tempfile.mkdtemp(prefix="turnout-overhead-"))
    skipped: dict[str, str] = {}
    litellm = None
    if args.no_litellm:
        skipped["litellm"] = "left out with --no-litellm"
    else:
        log("ensuring the LiteLLM proxy venv (bench/overhead/litellm-env.sh; about 80 s the first time)")
        litellm, why = targets.litellm_executable()
        if litellm is None:
            skipped["litellm"] = why

    upstream = targets.upstream(workdir, args.chunks, args.gap_ms)
    servers = [upstream]
    try:
        upstream.start()
        upstream.wait_ready(time.monotonic() + 30)
        candidates = [targets.bare(workdir, upstream.url), targets.turnout(workdir, upstream.url)]
        if litellm is not None:
            candidates.append(targets.litellm(workdir, upstream.url, litellm))
        servers += start_gateways(candidates, skipped)
        plan = build_plan(args, servers)
        log(f"measuring {', '.join(s.name for s in servers)} (logs in {workdir})")
        rss_idle = {s.name: s.rss_mb() for s in servers}
        busy, ours, started = targets.busy_seconds(), our_cpu(servers), time.monotonic()
        raw = run_load(plan, workdir)
        rss = {s.name: s.rss_mb() for s in servers}
        others = targets.busy_seconds() - busy - (our_cpu(servers) - ours)
        meta = {
            "rss_idle": rss_idle,
            "others_cpu_s": max(0.0, others),
            "c32_tool": "wrk 4 (-t1 -c32)" if plan["wrk"] else "the Python generator",
            "chunks": args.chunks,
            "gap_ms": args.gap_ms,
            "total_s": time.monotonic() - started,
        }
    finally:
        for server in reversed(servers):
            server.stop()
    table = report.render(raw, plan, rss, skipped, meta)
    print(table, flush=True)
    args.out.write_text(table)
    log(f"done in {time.monotonic() - began:.0f} s; table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
