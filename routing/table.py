"""The routing table and ``decide``: from a request's features to one decision, with no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from routing.decision import Decision, RequestFeatures, Target


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every name a client may put in ``model`` and the target it reaches directly."""

    models: Mapping[str, Target]

    @classmethod
    def of(cls, models: Mapping[str, Target]) -> RoutingTable:
        return cls(MappingProxyType(dict(models)))

    def names(self) -> list[str]:
        return list(self.models)


def decide(features: RequestFeatures, table: RoutingTable) -> Decision | None:
    """The decision for one request, or ``None`` when no name in the table matches its model."""
    target = table.models.get(features.model)
    if target is None:
        return None
    return Decision(target=target, rule="model-name", reason=f"model {features.model!r} names {target.label}")
