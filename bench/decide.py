"""How long ``routing.decide`` takes, by number of rules, and what semantic matching adds.

Policies of 1, 10, 50 and 200 rules mixing the cheap condition kinds (tenant, header, metadata,
keywords, regex, message count, token range, all/any/not); the request matches only the last rule,
so every rule is evaluated (the worst case). Semantic matching is measured separately: classifying a
query embedding against intents of real sentence embeddings, which is what a request pays on top of
its one embedding. Prints a markdown table; nothing is asserted.

Usage: .venv/bin/python bench/decide.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide
from routing.spec import PolicySpec

DIRECT = {"base": Target(TargetKind.BASE, "served")}
KINDS: list[dict[str, Any]] = [
    {"tenant": ["t1", "t2"]},
    {"header": {"name": "x-tier", "equals": "gold"}},
    {"metadata": {"key": "team", "in": ["a", "b"]}},
    {"keywords": ["refund", "invoice", "chargeback"]},
    {"regex": r"order #\d{6}"},
    {"messages": {"min": 40}},
    {"tokens": {"min": 3000, "max": 4000}},
    {"all": [{"tenant": "t3"}, {"not": {"header": {"name": "x-debug", "present": True}}}]},
    {"any": [{"user": "u-1"}, {"metadata": {"key": "campaign", "equals": "summer"}}]},
]
FEATURES = RequestFeatures(
    model="bot",
    tenant="acme",
    headers={"x-tier": "silver", "content-type": "application/json"},
    metadata={"team": "c"},
    user="u-2",
    text="Hello, I would like to know more about the opening hours of the harbour office next week.",
    message_count=3,
    token_estimate=120,
    request_id="r-1",
)


def policy(rules: int) -> RoutingTable:
    specs = [{"name": f"r{i}", "when": KINDS[i % len(KINDS)], "target": "base"} for i in range(rules - 1)]
    specs.append({"name": "last", "when": {"model": "bot"}, "target": "base"})
    return RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate({"rules": specs, "default": "base"})}, "served")


def timings(call: Any, rounds: int = 20000) -> tuple[float, float]:
    for _ in range(2000):
        call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(0.99 * len(samples))] / 1000


def main() -> None:
    print("| rules | decide() p50 µs | p99 µs |")
    print("|---|---|---|")
    for count in (1, 10, 50, 200):
        table = policy(count)
        decision = decide(FEATURES, table)
        assert decision is not None
        assert decision.rule == "last"
        p50, p99 = timings(lambda t=table: decide(FEATURES, t))
        print(f"| {count} | {p50:.1f} | {p99:.1f} |")

    from gateway.config.model import EmbeddingsConfig
    from gateway.embeddings import Embedder
    from routing.intents import IntentIndex

    embedder = Embedder(EmbeddingsConfig())
    embedder.load()
    examples = {f"intent-{i}": [f"example sentence {j} about topic {i}" for j in range(5)] for i in range(10)}
    vectors = {name: embedder.embed_many(texts) for name, texts in examples.items()}
    index = IntentIndex(vectors, {name: 0.5 for name in examples})
    query = embedder.embed_many(["a question about topic 3"])[0]
    p50, p99 = timings(lambda: index.classify(query), rounds=5000)
    embed_p50, _ = timings(lambda: embedder._encode(["a new question about topic 3"]), rounds=50)
    print(
        f"\nSemantic matching, 10 intents x 5 examples: classify p50 {p50:.1f} µs, p99 {p99:.1f} µs "
        f"(the one query embedding itself: p50 {embed_p50 / 1000:.1f} ms, uncached)."
    )


if __name__ == "__main__":
    main()
