"""The paths benchmark's pure parts: its texts never repeat, its configuration is valid, its goals add up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from paths import paths_table, workload

from gateway.config.model import TurnoutConfig
from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide
from routing.conditions import intents_used
from routing.spec import PolicySpec


def folded(text: str) -> str:
    """The text as the embedding cache keys it at most (whitespace runs made one space, lower-cased)."""
    return " ".join(text.split()).lower()


def test_new_texts_never_repeat_even_as_the_cache_folds_them() -> None:
    texts = [workload.semantic_question(i) for i in range(5000)] + [workload.kb_question(i) for i in range(5000)]
    texts += [workload.FIXED_TEXT, workload.REPEATED_TEXT]
    assert len({folded(t) for t in texts}) == len(texts)


def test_each_path_sends_a_new_text_only_where_it_should() -> None:
    for path in workload.PATHS:
        bodies = {path.body(i) for i in range(3)}
        assert len(bodies) == (3 if path.pool else 1), path.name


def test_the_configuration_is_valid_and_only_the_semantic_policy_uses_intents() -> None:
    config = TurnoutConfig.model_validate(workload.gateway_config("http://127.0.0.1:9", "/tmp/store"))
    uses = {name: any(intents_used(r.when) for r in p.rules) for name, p in config.policies.items()}
    assert uses == {workload.RULES_POLICY: False, workload.SEMANTIC_POLICY: True, workload.RAG_POLICY: False}
    assert set(config.intents) == set(workload.INTENTS)
    assert list(config.rag.collections) == [workload.COLLECTION]


def test_the_rules_path_passes_four_rules_and_matches_the_fifth() -> None:
    spec = workload.gateway_config("http://127.0.0.1:9", "/tmp/store")["policies"][workload.RULES_POLICY]
    policy = PolicySpec.model_validate(spec)
    table = RoutingTable.build({"base": Target(TargetKind.BASE, "base")}, {workload.RULES_POLICY: policy}, "base")
    features = RequestFeatures(
        model=workload.RULES_POLICY, text=workload.FIXED_TEXT, metadata=workload.RULES_METADATA, message_count=1
    )
    decision = decide(features, table)
    assert decision is not None
    assert decision.rule == workload.EXPECTED_RULE["rules"] == policy.rules[4].name


def test_knowledge_base_articles_are_distinct_and_named_apart() -> None:
    documents = workload.kb_documents(320)
    assert len({d["id"] for d in documents}) == len({d["text"] for d in documents}) == 320


def raw_results(semantic_ms: float, semantic_requests: int) -> dict[str, Any]:
    def c32(requests: int) -> list[dict[str, Any]]:
        return [{"requests": requests, "seconds": 2.0, "p99_ms": 5.0, "errors": 0, "texts_repeated": False}]

    names = [p.name for p in workload.PATHS]
    c1 = {n: {"ms": [1.0] * 100, "errors": 0} for n in names}
    c1["semantic-new"] = {"ms": [1.0 + semantic_ms] * 100, "errors": 0}
    return {"c1": c1, "c32": {n: c32(semantic_requests if n == "semantic-new" else 1000) for n in names}}


def test_added_latency_is_the_paths_minus_the_upstreams() -> None:
    figures = paths_table.path_figures(raw_results(4.0, 300), "semantic-new")
    assert figures["p50"] == figures["p99"] == 4.0
    assert figures["rps"] == 150.0


def retrieval_row(embed_ms: float, search_ms: float) -> dict[str, Any]:
    return {
        "chunks": 100_000,
        "insert_s": 1.0,
        "rss_mb": 1.0,
        "embed_ms": [embed_ms] * 10,
        "search_ms": [search_ms] * 10,
        "total_ms": [embed_ms + search_ms] * 10,
    }


def test_goals_pass_and_miss_at_their_bounds() -> None:
    ingestion = {"alone": {"chunks": 100, "seconds": 10.0}, "ingestor": {"chunks": 100, "seconds": 12.5}}
    raw = raw_results(5.0, 200)
    paths = {n: paths_table.path_figures(raw, n) for n in raw["c1"]}
    lines = paths_table.goals(paths, [paths_table.retrieval_figures(retrieval_row(8.0, 10.0))], ingestion, 599.0)
    assert [line.endswith("**PASS**") for line in lines] == [True, True, True, True, True]
    raw = raw_results(5.1, 199)
    paths = {n: paths_table.path_figures(raw, n) for n in raw["c1"]}
    ingestion["ingestor"]["seconds"] = 12.6
    lines = paths_table.goals(paths, [paths_table.retrieval_figures(retrieval_row(8.0, 10.1))], ingestion, 600.0)
    assert [line.endswith("**MISS**") for line in lines] == [True, True, True, True, True]


def test_the_embeddings_own_ceiling_is_stated_beside_the_throughput_goal() -> None:
    raw = raw_results(5.0, 200)
    paths = {n: paths_table.path_figures(raw, n) for n in raw["c1"]}
    embedding = {"single_ms": [3.0] * 10, "concurrent_qps": 400.0, "concurrency": 32}
    lines = paths_table.goals(paths, [], None, 100.0, embedding)
    ceiling = [line for line in lines if "the embedding alone" in line]
    assert ceiling == [
        "  (the embedding alone, 32 callers at once with no gateway around it: 400 queries/s; the semantic path "
        "serves 25% of that)"
    ]
