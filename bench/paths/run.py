"""The request paths users call through one Turnout gateway, side by side in one run (``make bench-paths``).

Starts, fresh and pinned as ``bench/overhead`` does, the fast fake upstream (core 0) and ONE Turnout process
(core 1, one worker) configured by ``workload.gateway_config``: the upstream as its base model, a rules-only
policy, a semantic policy over four intents and a RAG policy over an embedded-Qdrant collection. Ingests a
few hundred help-centre articles through the gateway's own API, checks that one request per path goes where
it should, then measures the paths interleaved (``traffic.py`` on core 0): by model name, rules only, the
semantic policy with a new text per request and with one repeated text, a RAG answer to a new question, and
the upstream directly as the floor. Reads the gateway's RSS, stops everything, then measures retrieval over
10,000 and 100,000 chunks and ingestion against the embedder alone (``inprocess.py``, on core 1), and prints
a markdown table with the goals (also written to ``bench/paths/latest.md``).

Usage: .venv/bin/python bench/paths/run.py [--quick] [--rounds 5] [--python-load]
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
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "overhead"))

import targets
from targets import GATEWAY_CORE, REPO, Server

from paths import paths_table, workload

HERE = Path(__file__).resolve().parent
Json = dict[str, Any]
PROBE_OFFSET = 20_000_000  # texts of the checks before measuring: never among the measured ones


def log(message: str) -> None:
    print(f"[paths] {message}", file=sys.stderr, flush=True)


def turnout(workdir: Path, upstream_url: str, backend: str) -> Server:
    """Turnout as ``bench/overhead/targets.py`` starts it, with this benchmark's configuration."""
    port = targets.free_port()
    path = workdir / "turnout-paths.yaml"
    config = workload.gateway_config(upstream_url, str(workdir / "qdrant"), backend)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    python = REPO / ".venv" / "bin" / "python"
    argv = [str(python if python.exists() else sys.executable), "-m", "gateway", "serve"]
    argv += ["--config", str(path), "--port", str(port)]
    return Server("turnout", argv, port, GATEWAY_CORE, workdir, env=targets.clean_env(PYTHONPATH=str(REPO)))


def post(url: str, body: bytes, timeout: float = 120) -> tuple[Json, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


def ingest_kb(gateway: Server, count: int) -> Json:
    """The knowledge base, through ``POST /v1/rag/collections/kb/documents`` in batches of 64 articles."""
    documents = workload.kb_documents(count)
    url = f"{gateway.url}/v1/rag/collections/{workload.COLLECTION}/documents"
    chunks, started = 0, time.monotonic()
    for first in range(0, len(documents), 64):
        answer, _ = post(url, json.dumps({"documents": documents[first : first + 64]}).encode())
        if answer.get("failed"):
            raise RuntimeError(f"ingesting the knowledge base failed: {answer['failed'][:3]}")
        chunks += int(answer.get("chunks", 0))
    return {"documents": len(documents), "chunks": chunks, "seconds": time.monotonic() - started}


def probe(gateway: Server, quick: bool) -> str:
    """One request per path (and a few new texts for the semantic policy): where did each go? Raises when a
    path does not go where the configuration says, so a broken setup is never measured."""
    url = gateway.url + "/v1/chat/completions"
    seen = []
    for path in workload.PATHS[1:]:
        _, headers = post(url, path.body(PROBE_OFFSET))
        rule = headers.get("x-turnout-rule")
        expected = workload.EXPECTED_RULE.get(path.name, rule)
        if rule != expected:
            raise RuntimeError(f"the {path.name} path went to rule {rule!r}, not {expected!r}")
        note = f"{path.name} → {rule or 'no rule'}"
        if path.pool == "kb":
            if headers.get("x-turnout-retrieval") != "hits":
                raise RuntimeError(f"the RAG path retrieved nothing: {headers.get('x-turnout-retrieval')!r}")
            note += f" ({headers.get('x-turnout-citations')} citations)"
        seen.append(note)
    rules: Counter[str] = Counter()
    for i in range(10 if quick else 30):
        _, headers = post(url, workload.path("semantic-new").body(PROBE_OFFSET + 1 + i))
        rules[headers.get("x-turnout-rule") or "default"] += 1
    matched = ", ".join(f"{rule} {n}" for rule, n in rules.most_common())
    seen.append(f"{sum(rules.values())} other new semantic texts matched {matched}")
    return "; ".join(seen)


def build_plan(args: argparse.Namespace, workdir: Path) -> Json:
    """What to measure and how much; the targets and the servers' pids are added once they run."""
    quick = args.quick
    return {
        "quick": quick,
        "backend": args.backend,
        "targets": [],
        "pids": [],
        "body": json.loads(workload.DIRECT.body()),
        "workdir": str(workdir),
        "rounds": 2 if quick else args.rounds,
        "warmup": 20 if quick else 50,
        "c1_requests": 40 if quick else 150,
        "concurrency": 32,
        "c32_seconds": 1.0 if quick else 2.0,
        "wrk": None if args.python_load else shutil.which("wrk"),
        "wrk_script": str(HERE / "cycle.lua"),
        "wrk_bodies": 4000,  # new bodies per c=32 block: far more than a path that embeds answers in 2 s
        "kb_documents": 96 if quick else 320,
        "inprocess": {
            "backend": args.backend,
            "workdir": str(workdir),
            "sizes": [10_000, 100_000],
            "queries": 40 if quick else 200,
            "ingest_rounds": 1 if quick else 3,
            "ingest_chunks": 32 if quick else 96,
        },
    }


def children_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_json(argv: list[str], plan: Json, path: Path, core: int, timeout: float) -> Json:
    """Run one of this benchmark's measuring scripts on ``core``; its stdout is one JSON object."""
    path.write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, *argv, str(path)],
        env=targets.clean_env(TQDM_DISABLE="1"),  # no progress bars of the model's loading
        stdout=subprocess.PIPE,
        timeout=timeout,
        check=True,
        preexec_fn=lambda: targets.pin(core),
    )
    path.with_suffix(".out.json").write_bytes(done.stdout)
    result: Json = json.loads(done.stdout)
    return result


def measure_gateway(plan: Json, workdir: Path, meta: Json) -> Json | None:
    """Everything through the gateway: the raw results, or None (and why, in ``meta``) when it failed."""
    upstream = targets.upstream(workdir, 20, 5.0)
    servers = [upstream]
    try:
        upstream.start()
        upstream.wait_ready(time.monotonic() + 30)
        gateway = turnout(workdir, upstream.url, plan["backend"])
        servers.append(gateway)
        gateway.start()
        log("starting Turnout (loading the embedding model, embedding the intents' examples)")
        gateway.wait_ready(time.monotonic() + 240)
        log(f"turnout ready on {gateway.url} (logs in {workdir})")
        rss = {"started": gateway.rss_mb()}
        meta["kb"] = ingest_kb(gateway, plan["kb_documents"])
        rss["ingested"] = gateway.rss_mb()
        meta["probes"] = probe(gateway, plan["quick"])
        urls = {workload.DIRECT.name: upstream.url}
        plan["targets"] = [
            {"name": p.name, "url": urls.get(p.name, gateway.url), "headers": {}} for p in workload.PATHS
        ]
        plan["pids"] = upstream.pids() + gateway.pids()
        busy, ours = targets.busy_seconds(), children_cpu() + sum(s.cpu_seconds() for s in servers)
        log("measuring the paths, interleaved")
        raw = run_json([str(HERE / "traffic.py")], plan, workdir / "plan.json", targets.UPSTREAM_CORE, 1800)
        rss["after"] = gateway.rss_mb()
        meta["rss"] = rss
        spent = children_cpu() + sum(s.cpu_seconds() for s in servers) - ours
        meta["others_cpu_s"] += max(0.0, targets.busy_seconds() - busy - spent)
        meta["c32_tool"] = "wrk 4 (-t1 -c32, cycle.lua)" if plan["wrk"] else "the Python generator"
        return raw
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        meta["gateway_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        log(f"the gateway could not be measured: {exc}")
        return None
    finally:
        for server in reversed(servers):
            server.stop()


def measure_inprocess(plan: Json, workdir: Path, meta: Json) -> Json | None:
    log("measuring retrieval and ingestion in one process on core 1 (the gateway has stopped)")
    busy, ours = targets.busy_seconds(), children_cpu()
    try:
        result = run_json(
            [str(HERE / "inprocess.py")], plan["inprocess"], workdir / "inprocess.json", GATEWAY_CORE, 1800
        )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        meta["inprocess_error"] = str(exc)[:200]
        return None
    finally:
        meta["others_cpu_s"] += max(0.0, targets.busy_seconds() - busy - (children_cpu() - ours))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each phase")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (figures too noisy to quote)")
    parser.add_argument("--python-load", action="store_true", help="c=32 by the Python generator even with wrk")
    parser.add_argument("--out", type=Path, default=HERE / "latest.md", help="where the table is also written")
    backends = ["auto", "onnx", "onnx-int8", "torch"]
    parser.add_argument("--backend", choices=backends, default="auto", help="embeddings.backend of the gateway")
    args = parser.parse_args()
    began = time.monotonic()
    targets.pin(targets.UPSTREAM_CORE)  # this process only waits; keep even that off the gateway's core
    workdir = Path(tempfile.mkdtemp(prefix="turnout-paths-"))
    meta: Json = {"others_cpu_s": 0.0, "c32_tool": "-"}
    plan = build_plan(args, workdir)
    raw = measure_gateway(plan, workdir, meta)
    inproc = measure_inprocess(plan, workdir, meta)
    meta["total_s"] = time.monotonic() - began
    table = paths_table.render(raw, inproc, plan, meta)
    print(table, flush=True)
    args.out.write_text(table)
    log(f"done in {meta['total_s']:.0f} s; table written to {args.out}; raw results in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
