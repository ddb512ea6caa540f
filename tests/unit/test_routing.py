"""The pure routing engine: rules in order, every condition kind, splits, fallbacks, explanations."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide, explain
from routing.intents import IntentIndex
from routing.spec import PolicySpec, TargetSpec

BASE = Target(TargetKind.BASE, "served-base")
ARM = {"weight": 1, "target": "base"}
DIRECT = {"base": BASE, "formal": Target(TargetKind.ADAPTER, "formal"), "terse": Target(TargetKind.ADAPTER, "terse")}


def table(policy: dict[str, Any], intents: IntentIndex | None = None) -> RoutingTable:
    return RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate(policy)}, "served-base", intents)


def ask(t: RoutingTable, **features: Any) -> tuple[str, str]:
    decision = decide(RequestFeatures(model="bot", **features), t)
    assert decision is not None
    return decision.rule, decision.target.label


def test_direct_names_and_unknown_names() -> None:
    t = table({"default": "base"})
    decision = decide(RequestFeatures(model="formal"), t)
    assert decision is not None
    assert decision.target.label == "adapter:formal"
    assert decision.rule == "model-name"
    assert decide(RequestFeatures(model="other"), t) is None


def test_first_matching_rule_wins_and_default_catches_the_rest() -> None:
    t = table(
        {
            "rules": [
                {"name": "acme", "when": {"tenant": "acme"}, "target": "adapter:formal"},
                {"name": "also-acme", "when": {"tenant": ["acme", "globex"]}, "target": "adapter:terse"},
            ],
            "default": "base",
        }
    )
    assert ask(t, tenant="acme") == ("acme", "adapter:formal")
    assert ask(t, tenant="globex") == ("also-acme", "adapter:terse")
    assert ask(t, tenant="initech") == ("default", "base:served-base")


@pytest.mark.parametrize(
    ("when", "features", "expected"),
    [
        ({"header": {"name": "X-Tier", "equals": "gold"}}, {"headers": {"x-tier": "gold"}}, True),
        ({"header": {"name": "x-tier", "equals": "gold"}}, {"headers": {"x-tier": "silver"}}, False),
        ({"header": {"name": "x-tier", "regex": "^(gold|plat)"}}, {"headers": {"x-tier": "platinum"}}, True),
        ({"header": {"name": "x-debug", "present": True}}, {"headers": {"x-debug": ""}}, True),
        ({"header": {"name": "x-debug", "present": False}}, {"headers": {}}, True),
        ({"metadata": {"key": "team", "in": ["a", "b"]}}, {"metadata": {"team": "b"}}, True),
        ({"metadata": {"key": "team", "equals": "a"}}, {"metadata": {}}, False),
        ({"keywords": ["refund", "invoice"]}, {"text": "Where is my INVOICE?"}, True),
        ({"keywords": ["refund"]}, {"text": "refunds are nice"}, False),  # whole words only
        ({"keywords": ["credit card"]}, {"text": "My Credit  Card was charged"}, False),  # phrases: exact spacing
        ({"keywords": ["x", "credit card"]}, {"text": "My credit card, charged"}, True),
        ({"regex": r"\border #\d+"}, {"text": "about order #1234"}, True),
        ({"messages": {"min": 3}}, {"message_count": 2}, False),
        ({"messages": {"min": 1, "max": 2}}, {"message_count": 2}, True),
        ({"tokens": {"max": 100}}, {"token_estimate": 101}, False),
        ({"model": "bot"}, {}, True),
        ({"user": ["u1"]}, {"user": "u1"}, True),
        ({"all": [{"tenant": "a"}, {"user": "u"}]}, {"tenant": "a", "user": "v"}, False),
        ({"any": [{"tenant": "a"}, {"user": "u"}]}, {"tenant": "b", "user": "u"}, True),
        ({"not": {"tenant": "a"}}, {"tenant": "a"}, False),
        ({"tenant": "a", "user": "u"}, {"tenant": "a", "user": "x"}, False),  # keys of one condition: all
    ],
)
def test_condition_kinds(when: dict[str, Any], features: dict[str, Any], expected: bool) -> None:
    t = table({"rules": [{"name": "r", "when": when, "target": "adapter:formal"}], "default": "base"})
    assert (ask(t, **features)[0] == "r") is expected


def _intents() -> IntentIndex:
    return IntentIndex(
        {"billing": [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]], "shipping": [[0.0, 1.0, 0.0]]},
        {"billing": 0.8, "shipping": 0.9},
    )


def test_intents_pick_the_best_clearing_intent_or_abstain() -> None:
    t = table(
        {
            "rules": [
                {"name": "billing", "when": {"intent": "billing"}, "target": "adapter:formal"},
                {"name": "shipping", "when": {"intent": "shipping"}, "target": "adapter:terse"},
                {"name": "unsure", "when": {"intent": "abstain"}, "target": "base"},
            ],
            "default": "adapter:formal",
        },
        _intents(),
    )
    assert ask(t, embedding=[2.0, 0.1, 0.0]) == ("billing", "adapter:formal")
    assert ask(t, embedding=[0.0, 3.0, 0.1]) == ("shipping", "adapter:terse")
    assert ask(t, embedding=[0.0, 0.0, 1.0]) == ("unsure", "base:served-base")
    decision = decide(RequestFeatures(model="bot", embedding=[2.0, 0.1, 0.0]), t)
    assert decision is not None
    assert "intent billing scored" in decision.reason


def test_a_policy_with_intents_requires_them() -> None:
    with pytest.raises(ValueError, match="uses intents"):
        table({"rules": [{"name": "r", "when": {"not": {"intent": "x"}}, "target": "base"}], "default": "base"})
    assert table({"default": "base"}, _intents()).needs_embedding("bot") is False
    assert table(
        {"rules": [{"name": "r", "when": {"intent": "billing"}, "target": "base"}], "default": "base"}, _intents()
    ).needs_embedding("bot")


def test_fallbacks_rule_overrides_policy_and_never_repeat_the_target() -> None:
    t = table(
        {
            "rules": [
                {"name": "own", "when": {"tenant": "a"}, "target": "adapter:formal", "fallbacks": ["base"]},
                {"name": "inherit", "when": {"tenant": "b"}, "target": "adapter:terse"},
            ],
            "default": "base",
            "fallbacks": ["adapter:terse", "openai:ft:gpt-4o-mini:acme::x"],
        }
    )
    first = decide(RequestFeatures(model="bot", tenant="a"), t)
    assert first is not None
    assert [x.label for x in first.chain] == ["adapter:formal", "base:served-base"]
    second = decide(RequestFeatures(model="bot", tenant="b"), t)
    assert second is not None
    assert [x.label for x in second.chain] == ["adapter:terse", "openai:ft:gpt-4o-mini:acme::x"]


def test_targets_carry_prompt_caps_and_the_hybrid_generator() -> None:
    t = table(
        {
            "rules": [
                {
                    "name": "r",
                    "when": {"tenant": "a"},
                    "target": {"base": True, "system_prompt": "Be brief.", "caps": {"max_tokens": 64}},
                },
                {"name": "facts", "when": {"tenant": "b"}, "target": "rag:docs+adapter:formal"},
            ],
            "default": "base",
        }
    )
    decision = decide(RequestFeatures(model="bot", tenant="a"), t)
    assert decision is not None
    assert decision.target.system_prompt == "Be brief."
    assert decision.target.caps.max_tokens == 64
    hybrid = decide(RequestFeatures(model="bot", tenant="b"), t)
    assert hybrid is not None
    assert hybrid.target.label == "rag:docs+adapter:formal"
    assert hybrid.target.generator == Target(TargetKind.ADAPTER, "formal")


def test_explain_traces_every_rule_and_agrees_with_decide() -> None:
    t = table(
        {
            "rules": [
                {
                    "name": "first",
                    "when": {"all": [{"tenant": "a"}, {"not": {"user": "u"}}]},
                    "target": "adapter:formal",
                },
                {"name": "second", "when": {"tenant": "b"}, "target": "adapter:terse"},
                {"name": "third", "target": "base"},
            ],
            "default": "base",
        }
    )
    features = RequestFeatures(model="bot", tenant="b", user="u")
    explained = explain(features, t)
    assert explained is not None
    assert [r["matched"] for r in explained["rules"]] == [False, True, True]
    assert [r.get("chosen", False) for r in explained["rules"]] == [False, True, False]
    assert explained["rules"][0]["all"][1] == {"not": {"condition": "user is 'u'", "matched": True}, "matched": False}
    decision = decide(features, t)
    assert decision is not None
    assert explained["decision"] == decision.describe()
    assert explained["decision"]["reason"] == "tenant is 'b'"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("gpu:x", "unknown target kind 'gpu'"),
        ("adapter:", "is not a target"),
        ({"adapter": "a", "openai": "b"}, "exactly one of base, adapter, openai, rag"),
        ({"rag": {"collection": "c", "generator": "gpt"}}, "generator must be 'base' or 'adapter:NAME'"),
    ],
)
def test_bad_targets_are_refused(spec: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        TargetSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("policy", "needle"),
    [
        ({"rules": [{"name": "r", "when": {}, "target": "base"}], "default": "base"}, "an empty condition"),
        ({"rules": [{"name": "r", "when": {"regex": "("}, "target": "base"}], "default": "base"}, "invalid regular"),
        (
            {"rules": [{"name": "r", "target": "base", "split": {"arms": [ARM, ARM]}}], "default": "base"},
            "exactly one of",
        ),
        (
            {"rules": [{"name": "r", "when": {"header": {"name": "h"}}, "target": "base"}], "default": "base"},
            "give exactly one of equals, regex, present",
        ),
        (
            {"rules": [{"name": "r", "target": "base"}, {"name": "r", "target": "base"}], "default": "base"},
            "used twice",
        ),
        (
            {"rules": [{"name": "r", "when": {"tokens": {"min": 5, "max": 1}}, "target": "base"}], "default": "base"},
            "min 5 is above max 1",
        ),
    ],
)
def test_bad_policies_are_refused(policy: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        PolicySpec.model_validate(policy)
