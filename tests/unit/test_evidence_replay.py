"""Policy replay: recorded requests decided again by a candidate table; the same policy changes nothing, a
changed one reports exactly the rules that moved, and what cannot be decided without the text is counted
as not replayable rather than guessed."""

from __future__ import annotations

from typing import Any

from gateway.evidence.replay import replay
from gateway.evidence.store import RequestRecord
from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide
from routing.spec import PolicySpec

DIRECT = {
    "base": Target(TargetKind.BASE, "served-base"),
    "formal": Target(TargetKind.ADAPTER, "formal"),
    "terse": Target(TargetKind.ADAPTER, "terse"),
}
POLICY: dict[str, Any] = {
    "rules": [
        {"name": "billing", "when": {"metadata": {"key": "team", "equals": "billing"}}, "target": "adapter:formal"},
        {"name": "long", "when": {"messages": {"min": 5}}, "target": "adapter:terse"},
    ],
    "default": "base",
}


def table(policy: dict[str, Any]) -> RoutingTable:
    return RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate(policy)}, "served-base", None)


def recorded(t: RoutingTable) -> list[RequestRecord]:
    records = []
    for i in range(30):
        features: dict[str, Any] = {"model": "bot", "metadata": {"team": "billing" if i % 3 == 0 else "sales"}}
        features["message_count"] = i % 7
        decision = decide(RequestFeatures(model="bot", request_id=f"r{i}", metadata=features["metadata"],
                                          message_count=features["message_count"]), t)  # fmt: skip
        assert decision is not None
        records.append(RequestRecord(float(i), f"r{i}", "bot", decision.rule, decision.target.label, features, None))
    return records


async def test_the_same_policy_changes_nothing() -> None:
    t = table(POLICY)
    found = (await replay(recorded(t), t)).describe()
    assert (found["requests"], found["changed"], found["unchanged"]) == (30, 0, 30)
    assert found["moves"] == []


async def test_a_changed_policy_reports_exactly_the_rules_that_moved() -> None:
    records = recorded(table(POLICY))
    candidate = {**POLICY, "rules": [{**POLICY["rules"][0], "target": "adapter:terse"}, POLICY["rules"][1]]}
    found = (await replay(records, table(candidate), samples=2)).describe()
    billing = [r for r in records if r.rule == "billing"]
    assert found["changed"] == len(billing) == 10
    [move] = found["moves"]
    assert (move["from"], move["to"]) == (
        {"rule": "billing", "target": "adapter:formal"}, {"rule": "billing", "target": "adapter:terse"}
    )  # fmt: skip
    assert move["samples"] == ["r0", "r3"]
    assert found["by_rule"]["bot/billing"] == {"requests": 10, "changed": 10}
    assert found["by_rule"]["bot/long"]["changed"] == 0


async def test_a_candidate_reading_text_needs_the_text() -> None:
    records = recorded(table(POLICY))
    keywords = {"rules": [{"name": "refunds", "when": {"keywords": ["refund"]}, "target": "adapter:formal"}],
                "default": "base"}  # fmt: skip
    found = (await replay(records, table(keywords))).describe()
    assert found["not_replayable"] == 30
    texts = [RequestRecord(r.at, r.request_id, r.policy, r.rule, r.target, r.features, None, "a refund please")
             for r in records]  # fmt: skip
    kept = (await replay(texts, table(keywords))).describe()
    assert kept["not_replayable"] == 0
    assert all(move["to"]["rule"] == "refunds" for move in kept["moves"])
    gone = (await replay(records, RoutingTable.build(DIRECT, {}, "served-base", None))).describe()
    assert gone["policy_gone"] == 30
