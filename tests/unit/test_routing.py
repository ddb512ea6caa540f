"""The pure routing table."""

from __future__ import annotations

from routing import RequestFeatures, RoutingTable, Target, TargetKind, decide


def test_names_route_to_their_targets_and_unknown_names_to_none() -> None:
    table = RoutingTable.of({"base": Target(TargetKind.BASE, "served-base"), "a": Target(TargetKind.ADAPTER, "a")})
    decision = decide(RequestFeatures(model="base"), table)
    assert decision is not None
    assert decision.target == Target(TargetKind.BASE, "served-base")
    assert decision.target.label == "base:served-base"
    assert decision.chain == (decision.target,)
    assert "base" in decision.reason
    adapter = decide(RequestFeatures(model="a"), table)
    assert adapter is not None
    assert adapter.target.label == "adapter:a"
    assert decide(RequestFeatures(model="other"), table) is None
