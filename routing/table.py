"""The routing table and ``decide``: from a request's features to one decision, with no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from routing.decision import Decision, RequestFeatures, Target
from routing.policy import Policy, compile_policy, target_resolver
from routing.spec import PolicySpec

if TYPE_CHECKING:
    from routing.intents import IntentIndex


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every name a client may put in ``model``: a target reached directly, or a policy."""

    models: Mapping[str, Target | Policy]

    @classmethod
    def of(cls, models: Mapping[str, Target | Policy]) -> RoutingTable:
        return cls(MappingProxyType(dict(models)))

    @classmethod
    def build(
        cls,
        direct: Mapping[str, Target],
        policies: Mapping[str, PolicySpec],
        base_model: str,
        intents: IntentIndex | None = None,
    ) -> RoutingTable:
        """Direct names plus compiled policies; policy names must not shadow direct ones."""
        clash = set(direct) & set(policies)
        if clash:
            raise ValueError(f"policy names {sorted(clash)} are also model or adapter names")
        resolve = target_resolver(base_model)
        compiled = {name: compile_policy(name, spec, resolve, intents) for name, spec in policies.items()}
        return cls.of({**direct, **compiled})

    def names(self) -> list[str]:
        return list(self.models)

    def needs_embedding(self, model: str) -> bool:
        entry = self.models.get(model)
        return isinstance(entry, Policy) and entry.needs_embedding

    @property
    def shadowed(self) -> bool:
        """Whether any policy sends a share of its requests to shadow arms."""
        return any(
            isinstance(entry, Policy) and (entry.shadow is not None or any(r.shadow for r in entry.rules))
            for entry in self.models.values()
        )

    def reads_text(self, model: str) -> bool:
        """Whether the policy called ``model`` has a condition on the message's text."""
        entry = self.models.get(model)
        return isinstance(entry, Policy) and entry.reads_text

    def needs_conversation(self, model: str) -> bool:
        entry = self.models.get(model)
        return isinstance(entry, Policy) and entry.needs_conversation


def decide(features: RequestFeatures, table: RoutingTable, after: str | None = None) -> Decision | None:
    """The decision for one request, or ``None`` when no name in the table matches its model.

    ``after`` names a rule whose target passed the request on: evaluation resumes after it."""
    entry = table.models.get(features.model)
    if entry is None:
        return None
    if isinstance(entry, Policy):
        return entry.decide(features, after)
    return Decision(target=entry, rule="model-name", reason=f"model {features.model!r} names {entry.label}")


def explain(features: RequestFeatures, table: RoutingTable) -> dict[str, Any] | None:
    """``decide`` with its full reasoning: every rule evaluated, and the intent scores."""
    entry = table.models.get(features.model)
    if entry is None:
        return None
    if isinstance(entry, Policy):
        return {"model": features.model, "policy": entry.name, **entry.explain(features)}
    decision = decide(features, table)
    assert decision is not None
    return {"model": features.model, "policy": None, "decision": decision.describe(), "rules": []}
