"""Turning the paths benchmark's raw results into its markdown table and goal checks (pure: no I/O).

Percentiles, medians, the machine line and PASS/MISS come from ``bench/overhead``'s ``report``, so both
benchmarks compute them alike.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overhead"))

from report import machine, median, pct, verdict

from paths import workload

Json = dict[str, Any]
LABELS = {p.name: p.label for p in workload.PATHS}
BY_NAME, SEMANTIC_NEW = "model", "semantic-new"

# The goals, in one place: the table states them with these numbers.
SEMANTIC_ADDED_P50_MS = 5.0
SEMANTIC_RPS_SHARE = 0.20
INGEST_SHARE = 0.80
SEARCH_BEYOND_EMBED_MS = 10.0
RSS_LIMIT_MB = 600.0


def path_figures(raw: Json, name: str) -> Json:
    """A path's c=1 figures (added to the upstream's, or the round trip for the upstream) and c=32 figures."""
    c1, direct = raw["c1"][name]["ms"], raw["c1"][workload.DIRECT.name]["ms"]
    blocks = raw["c32"][name]
    seconds = sum(b["seconds"] for b in blocks)
    p50, p99 = median(c1), pct(c1, 0.99)
    if name != workload.DIRECT.name:
        p50 -= median(direct)
        p99 -= pct(direct, 0.99)
    return {
        "p50": p50,
        "p99": p99,
        "rps": sum(b["requests"] for b in blocks) / seconds if seconds else math.nan,
        "c32_p99": median([b["p99_ms"] for b in blocks]),
        "errors": raw["c1"][name]["errors"] + sum(b["errors"] for b in blocks),
        "repeated": any(b.get("texts_repeated") for b in blocks),
    }


def retrieval_figures(row: Json) -> Json:
    embed, search, total = row["embed_ms"], row["search_ms"], row["total_ms"]
    return {
        "chunks": row["chunks"],
        "embed": (median(embed), pct(embed, 0.99)),
        "search": (median(search), pct(search, 0.99)),
        "total": (median(total), pct(total, 0.99)),
        "beyond": median(total) - median(embed),
        "queries": len(total),
        "insert_s": row["insert_s"],
        "rss_mb": row["rss_mb"],
    }


def rates(ingestion: Json) -> tuple[float, float]:
    """Chunks per second: the embedder alone, and the Ingestor."""
    alone, ingestor = ingestion["alone"], ingestion["ingestor"]
    return alone["chunks"] / alone["seconds"], ingestor["chunks"] / ingestor["seconds"]


def goals(
    paths: dict[str, Json],
    retrieval: list[Json],
    ingestion: Json | None,
    rss_mb: float | None,
    embedding: Json | None = None,
) -> list[str]:
    lines = []
    semantic, by_name = paths.get(SEMANTIC_NEW), paths.get(BY_NAME)
    if semantic is None:
        lines.append("- Semantic policy, new text: not measured (it failed in the warm-up): **MISS**")
    else:
        ok = semantic["p50"] <= SEMANTIC_ADDED_P50_MS
        lines.append(
            f"- Semantic policy, new text: added p50 at c=1 ≤ {SEMANTIC_ADDED_P50_MS:g} ms: "
            f"{semantic['p50']:+.2f} ms: **{verdict(ok)}**"
        )
    if semantic is None or by_name is None:
        lines.append("- Semantic policy, new text, c=32: a path was not measured: **MISS**")
    else:
        share = semantic["rps"] / by_name["rps"]
        lines.append(
            f"- Semantic policy, new text, c=32 ≥ {SEMANTIC_RPS_SHARE:.0%} of the requests/s by model name: "
            f"{semantic['rps']:,.0f} vs {by_name['rps']:,.0f} ({share:.1%}): "
            f"**{verdict(share >= SEMANTIC_RPS_SHARE)}**"
        )
        if embedding is not None:
            ceiling = embedding["concurrent_qps"]
            lines.append(
                f"  (the embedding alone, {embedding['concurrency']} callers at once with no gateway around it: "
                f"{ceiling:,.0f} queries/s; the semantic path serves {semantic['rps'] / ceiling:.0%} of that)"
            )
    if ingestion is None:
        lines.append("- Ingestion ≥ 80% of the embedder alone: not measured: **MISS**")
    else:
        alone, ingestor = rates(ingestion)
        lines.append(
            f"- Ingestion chunks/s ≥ {INGEST_SHARE:.0%} of the embedder alone on the same chunks: {ingestor:.1f} vs "
            f"{alone:.1f} chunks/s ({ingestor / alone:.0%}): **{verdict(ingestor >= INGEST_SHARE * alone)}**"
        )
    if not retrieval:
        lines.append("- Retrieval p50 within 10 ms of the query embedding's: not measured: **MISS**")
    else:
        big = retrieval[-1]
        lines.append(
            f"- Retrieval over {big['chunks']:,} chunks: p50 at most {SEARCH_BEYOND_EMBED_MS:g} ms beyond the query "
            f"embedding's p50: {big['total'][0]:.1f} vs {big['embed'][0]:.1f} ms ({big['beyond']:+.1f} ms): "
            f"**{verdict(big['beyond'] <= SEARCH_BEYOND_EMBED_MS)}**"
        )
    rss = f"{rss_mb:.0f} MB" if rss_mb is not None else "not read"
    lines.append(
        f"- Gateway RSS with the embedder loaded < {RSS_LIMIT_MB:.0f} MB: {rss} (after the load): "
        f"**{verdict(rss_mb is not None and rss_mb < RSS_LIMIT_MB)}**"
    )
    return lines


def path_row(name: str, f: Json, by_name_rps: float | None) -> str:
    share = f"{f['rps'] / by_name_rps:.1%}" if by_name_rps and name != workload.DIRECT.name else ""
    if name == workload.DIRECT.name:
        c1 = f"round trip {f['p50']:.2f} / {f['p99']:.2f}"
    else:
        c1 = f"{f['p50']:+.2f} / {f['p99']:+.2f}"
    return f"| {LABELS[name]} | {c1} | {f['rps']:,.0f} | {share} | {f['c32_p99']:.1f} |"


def render(raw: Json | None, inproc: Json | None, plan: Json, meta: Json) -> str:
    out = [
        "# The paths users call through one Turnout gateway",
        "",
        f"Machine: {machine()}. Fake upstream and load generator on core 0; one Turnout process (one worker, the "
        f"embedding model loaded, embeddings.backend {plan.get('backend', 'auto')}) on core 1; the in-process "
        "measurements on core 1 after the gateway stopped.",
        "",
    ]
    paths: dict[str, Json] = {}
    if raw is None:
        out += [f"Paths through the gateway: not measured ({meta.get('gateway_error', 'unknown')}).", ""]
    else:
        names = [t["name"] for t in plan["targets"] if t["name"] not in raw["failed"]]
        paths = {n: path_figures(raw, n) for n in names}
        by_name = paths.get(BY_NAME, {}).get("rps")
        out += [
            "| path | added p50 / p99 at c=1 (ms) | requests/s at c=32 | share of by model name's | p99 at c=32 (ms) |",
            "|---|---|---|---|---|",
        ]
        out += [path_row(n, paths[n], by_name) for n in names]
        out += [f"| {LABELS[n]} | not measured ({why}) | | | |" for n, why in raw["failed"].items()]
        out.append("")
    rss = meta.get("rss", {})
    if rss:
        out += [
            f"Gateway RSS (VmRSS): {rss['started']:.0f} MB once started (embedding model loaded, intent examples "
            f"embedded), {rss['ingested']:.0f} MB after ingesting the knowledge base, "
            + (
                f"{rss['after']:.0f} MB after the load." if rss.get("after") is not None else "not read after the load."
            ),
            "",
        ]
    retrieval = [retrieval_figures(r) for r in inproc["retrieval"]] if inproc else []
    ingestion = inproc["ingestion"] if inproc else None
    if retrieval:
        out += [
            "Retrieval as the gateway pays it (a new question's embedding, then the search of the shared partition, "
            "top 4), ms:",
            "",
            "| chunks in the store | embed the question p50 / p99 | search p50 / p99 | retrieval p50 / p99 "
            "| retrieval p50 beyond the embedding's |",
            "|---|---|---|---|---|",
        ]
        for r in retrieval:
            out.append(
                f"| {r['chunks']:,} | {r['embed'][0]:.1f} / {r['embed'][1]:.1f} | {r['search'][0]:.1f} / "
                f"{r['search'][1]:.1f} | {r['total'][0]:.1f} / {r['total'][1]:.1f} | {r['beyond']:+.1f} |"
            )
        out.append("")
    if ingestion is not None:
        alone, ingestor = rates(ingestion)
        a, i = ingestion["alone"], ingestion["ingestor"]
        out += [
            f"Ingestion of the same {a['chunks'] // max(1, plan['inprocess']['ingest_rounds']):,} chunks per round "
            f"(~{ingestion['tokens_mean']:.0f} tokens each, at most {ingestion['tokens_max']}), "
            f"{plan['inprocess']['ingest_rounds']} rounds:",
            "",
            "| | chunks | seconds | chunks/s |",
            "|---|---|---|---|",
            f"| embedder alone (embed_documents) | {a['chunks']:,} | {a['seconds']:.1f} | {alone:.1f} |",
            f"| Ingestor.ingest (chunking, embedding, store on disk) | {i['chunks']:,} | {i['seconds']:.1f} | "
            f"{ingestor:.1f} |",
            "",
        ]
    if inproc is None:
        out += [f"In-process measurements: not measured ({meta.get('inprocess_error', 'unknown')}).", ""]
    embedding = inproc.get("embedding") if inproc else None
    if embedding is not None:
        single = embedding["single_ms"]
        out += [
            "The embedding alone, as the gateway calls it (`Embedder.embed_query`, the semantic path's new questions, "
            f"no gateway around it): one at a time p50 {median(single):.2f} ms, p99 {pct(single, 0.99):.2f} ms; "
            f"{embedding['concurrency']} callers at once {embedding['concurrent_qps']:,.0f} queries/s.",
            "",
        ]
    out += ["Goals:", "", *goals(paths, retrieval, ingestion, rss.get("after"), embedding), ""]
    out += how(raw, inproc, plan, meta)
    return "\n".join(out) + "\n"


def how(raw: Json | None, inproc: Json | None, plan: Json, meta: Json) -> list[str]:
    lines = []
    if raw is not None:
        repeated = [n for n, f in ((n, path_figures(raw, n)) for n in raw["c1"]) if f["repeated"]]
        lines.append(
            f"How: the paths interleaved, small blocks in rotation, {plan['rounds']} rounds after a warm-up; c=1: "
            f"{plan['c1_requests']} sequential requests per block, added = the path's p50/p99 minus the upstream's "
            f"in the same rounds; c=32: {plan['c32_seconds']:g} s closed-loop blocks by {meta['c32_tool']}. "
            f'Every request of a "new" path carried a text never sent before in the run, warm-up included '
            f"({raw['new_texts']['semantic']:,} semantic and {raw['new_texts']['kb']:,} RAG questions prepared, each "
            "sent at most once"
            + (f"; a c=32 block by wrk gets {plan['wrk_bodies']:,} of its own)" if plan["wrk"] else ")")
            + (
                f"; **some c=32 blocks sent more requests than they had new texts ({', '.join(repeated)})**."
                if repeated
                else "."
            )
        )
        lines.append("")
    if meta.get("kb"):
        kb = meta["kb"]
        lines.append(
            f"Knowledge base: {kb['documents']} help-centre articles, {kb['chunks']} chunks, ingested through "
            f"`POST /v1/rag/collections/kb/documents` in {kb['seconds']:.1f} s before measuring."
        )
    if meta.get("probes"):
        lines.append(f"Before measuring, one request per path: {meta['probes']}.")
    if inproc is not None:
        sizes = ", ".join(f"{r['chunks']:,} ({r['insert_s']:.0f} s)" for r in inproc["retrieval"])
        queries = plan["inprocess"]["queries"]
        lines.append(
            f"Retrieval: {queries} new questions per store size; synthetic unit vectors written by "
            f"`VectorStore.write_document` (store on {inproc['store_dir']}; chunks and time to write them: {sizes}). "
            f"The in-process measurer's own RSS: {inproc['embedder']['rss_loaded_mb']:.0f} MB with the embedder "
            f"loaded, {inproc['retrieval'][-1]['rss_mb']:.0f} MB holding {inproc['retrieval'][-1]['chunks']:,} "
            "chunks."
            if inproc["retrieval"]
            else "Retrieval: not measured."
        )
    lines.append("")
    errors = {}
    if raw is not None:
        errors = {n: f["errors"] for n in raw["c1"] if (f := path_figures(raw, n))["errors"]}
    total = meta["total_s"]
    phases = {**(raw or {}).get("phase_seconds", {}), **(inproc or {}).get("phase_seconds", {})}
    lines.append(
        f"Errors: {', '.join(f'{n} {e}' for n, e in errors.items()) if errors else 'none'}. "
        f"Phases took {', '.join(f'{k} {v:.0f} s' for k, v in phases.items())}; the whole run {total:.0f} s. "
        f"Other processes on the machine used {meta['others_cpu_s']:.0f} CPU-seconds meanwhile "
        f"({meta['others_cpu_s'] / total:.0%} of one core): the more, the noisier the figures."
        + (
            " **The machine was busy with other work during this run: run again before quoting it.**"
            if meta["others_cpu_s"] > 0.25 * total
            else ""
        )
    )
    return lines
