"""Shadow arms in the policy engine: a sampled share of a rule's requests (by a hash of the request id, so
reproducible) also names other targets; a rule's own shadow overrides its policy's; the chosen target is
never its own shadow; explain shows them; and the configuration's checks see the shadow targets."""

from __future__ import annotations

from typing import Any

from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide, explain
from routing.spec import PolicySpec

BASE = Target(TargetKind.BASE, "served-base")
FORMAL = Target(TargetKind.ADAPTER, "formal")
TERSE = Target(TargetKind.ADAPTER, "terse")
DIRECT = {"base": BASE, "formal": FORMAL, "terse": TERSE}


def table(policy: dict[str, Any]) -> RoutingTable:
    return RoutingTable.build(DIRECT, {"bot": PolicySpec.model_validate(policy)}, "served-base", None)


def shadows(t: RoutingTable, request_id: str, **features: Any) -> tuple[Target, ...]:
    decision = decide(RequestFeatures(model="bot", request_id=request_id, **features), t)
    assert decision is not None
    return decision.shadows


POLICY: dict[str, Any] = {
    "rules": [
        {"name": "billing", "when": {"metadata": {"key": "team", "equals": "billing"}}, "target": "adapter:formal",
         "shadow": {"targets": ["adapter:terse", "adapter:formal"], "sample": 1.0}},
        {"name": "sales", "when": {"metadata": {"key": "team", "equals": "sales"}}, "target": "adapter:terse"},
    ],
    "default": "base",
    "shadow": {"targets": ["adapter:formal"], "sample": 0.25},
}  # fmt: skip


def test_a_rules_shadow_overrides_the_policys_and_never_repeats_the_chosen_target() -> None:
    t = table(POLICY)
    assert t.shadowed
    assert shadows(t, "r1", metadata={"team": "billing"}) == (TERSE,)  # formal answers: not its own shadow


def test_the_sample_is_a_reproducible_share_of_request_ids() -> None:
    t = table(POLICY)
    sampled = [bool(shadows(t, f"req-{i}", metadata={"team": "sales"})) for i in range(4000)]
    assert 0.22 < sum(sampled) / len(sampled) < 0.28  # the policy's 25%, for the rule without its own
    assert [bool(shadows(t, f"req-{i}", metadata={"team": "sales"})) for i in range(200)] == sampled[:200]
    assert {shadows(t, f"req-{i}") for i in range(400)} == {(), (FORMAL,)}  # the default rule: the policy's


def test_explain_names_the_shadows_and_no_shadow_leaves_no_trace() -> None:
    t = table(POLICY)
    explained = explain(RequestFeatures(model="bot", request_id="r1", metadata={"team": "billing"}), t)
    assert explained is not None
    assert explained["decision"]["shadows"] == [TERSE.describe()]
    plain = table({"rules": [], "default": "base"})
    assert not plain.shadowed
    decision = decide(RequestFeatures(model="bot", request_id="r1"), plain)
    assert decision is not None
    assert decision.shadows == ()
    assert "shadows" not in decision.describe()


def test_the_configuration_sees_every_shadow_target() -> None:
    spec = PolicySpec.model_validate(POLICY)
    where = [path for path, _ in spec.targets() if "shadow" in path]
    assert where == [
        ("shadow", "targets", 0),
        ("rules", 0, "shadow", "targets", 0),
        ("rules", 0, "shadow", "targets", 1),
    ]
