"""Properties of the routing engine over generated requests (hypothesis)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide
from routing.spec import PolicySpec

DIRECT = {"base": Target(TargetKind.BASE, "served")}
TENANTS = st.sampled_from(["acme", "globex", "initech", None])
WORDS = st.text(alphabet="abcdefgh ", max_size=30)


def build(policy: dict[str, object]) -> RoutingTable:
    return RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate(policy)}, "served")


POLICY = build(
    {
        "rules": [
            {
                "name": "gold",
                "when": {"all": [{"tenant": "acme"}, {"header": {"name": "x-tier", "equals": "gold"}}]},
                "target": "adapter:a",
            },
            {
                "name": "words",
                "when": {"any": [{"keywords": ["bad"]}, {"messages": {"min": 5}}]},
                "target": "adapter:b",
            },
            {"name": "not-globex", "when": {"not": {"tenant": "globex"}}, "target": "adapter:c"},
        ],
        "default": "base",
        "fallbacks": ["base"],
    }
)

features = st.builds(
    RequestFeatures,
    model=st.just("bot"),
    tenant=TENANTS,
    headers=st.dictionaries(st.sampled_from(["x-tier", "x-other"]), st.sampled_from(["gold", "silver"]), max_size=2),
    text=WORDS,
    message_count=st.integers(0, 10),
    user=st.one_of(st.none(), st.text(max_size=8)),
    request_id=st.text(max_size=12),
)


@given(features)
def test_every_request_gets_exactly_one_decision(f: RequestFeatures) -> None:
    decision = decide(f, POLICY)
    assert decision is not None
    assert decision.rule in {"gold", "words", "not-globex", "default"}
    assert decision.target not in decision.fallbacks
    assert decide(f, POLICY) == decision  # deterministic


@given(features)
def test_an_all_rule_never_matches_when_one_of_its_conditions_fails(f: RequestFeatures) -> None:
    decision = decide(f, POLICY)
    assert decision is not None
    if f.tenant != "acme" or f.headers.get("x-tier") != "gold":
        assert decision.rule != "gold"
    else:
        assert decision.rule == "gold"


SPLIT = build(
    {
        "rules": [
            {
                "name": "canary",
                "split": {
                    "sticky": "user",
                    "arms": [{"weight": 90, "target": "adapter:stable"}, {"weight": 10, "target": "adapter:canary"}],
                },
            },
        ],
        "default": "base",
    }
)


@settings(max_examples=25)
@given(st.integers(0, 2**32))
def test_split_weights_hold_statistically(seed: int) -> None:
    n = 4000
    counts = Counter(
        decide(RequestFeatures(model="bot", request_id=f"{seed}-{i}"), SPLIT).target.name  # type: ignore[union-attr]
        for i in range(n)
    )
    share = counts["canary"] / n
    sigma = math.sqrt(0.1 * 0.9 / n)
    assert abs(share - 0.1) < 5 * sigma, counts


@given(st.text(min_size=1, max_size=20), st.lists(st.text(max_size=10), min_size=2, max_size=10))
def test_split_is_sticky_per_user(user: str, request_ids: list[str]) -> None:
    arms = {
        decide(RequestFeatures(model="bot", user=user, request_id=rid, text=rid), SPLIT).target.name  # type: ignore[union-attr]
        for rid in request_ids
    }
    assert len(arms) == 1


@given(st.text(min_size=1, max_size=20), st.lists(st.text(max_size=10), min_size=2, max_size=10))
def test_split_is_sticky_per_conversation(conversation: str, request_ids: list[str]) -> None:
    table = build(
        {
            "rules": [
                {
                    "name": "c",
                    "split": {
                        "sticky": "conversation",
                        "arms": [{"weight": 1, "target": "adapter:x"}, {"weight": 1, "target": "adapter:y"}],
                    },
                }
            ],
            "default": "base",
        }
    )
    arms = {
        decide(RequestFeatures(model="bot", conversation=conversation, request_id=rid), table).target.name  # type: ignore[union-attr]
        for rid in request_ids
    }
    assert len(arms) == 1
