"""The report on the recorded arms: per policy and intent (or rule, where no intent was matched), for each arm,
its requests, p50 and p95 latency, dollars per 1,000 requests, agreement with the primary answer and error
rate, and a recommendation that states its numbers.

The recommendation: among the shadow arms that failed at most ``max_error_rate`` of the time and agreed with
the primary answer at least ``min_agreement`` on average, the cheapest, if it is cheaper than the primary
arm ("pricing: rag:handbook+adapter:formal agrees with adapter:formal at 0.91 for 38% of its cost, with
citations: route these requests to it"); else keep the primary, saying why. Fewer than ``min_requests``
requests in a group: no recommendation yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.evidence.store import ArmRow


@dataclass(frozen=True, slots=True)
class ArmFigures:
    arm: str
    primary: bool
    requests: int
    errors: int
    p50_s: float
    p95_s: float
    usd_per_1000: float
    agreement: float | None  # mean over the answered requests (None: the primary, or nothing measured)
    citations: float | None  # mean citations of a RAG arm

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "primary": self.primary,
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": round(self.p50_s * 1000, 1),
            "p95_ms": round(self.p95_s * 1000, 1),
            "usd_per_1000_requests": round(self.usd_per_1000, 6),
            "agreement": round(self.agreement, 4) if self.agreement is not None else None,
            "citations": round(self.citations, 2) if self.citations is not None else None,
        }


@dataclass(slots=True)
class Group:
    policy: str
    key: str  # "intent pricing" or "rule billing"
    arms: list[ArmFigures] = field(default_factory=list)
    recommendation: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "group": self.key,
            "arms": [arm.describe() for arm in self.arms],
            "recommendation": self.recommendation,
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_agreement: float = 0.85
    max_error_rate: float = 0.05
    min_requests: int = 20


def report(rows: Iterable[ArmRow], thresholds: Thresholds = Thresholds()) -> list[Group]:
    """The groups of ``rows``, each with its arms' figures (the primary arm first) and a recommendation."""
    grouped: dict[tuple[str, str], dict[tuple[str, bool], list[ArmRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = f"intent {row.intent}" if row.intent else f"rule {row.rule}"
        grouped[(row.policy, key)][(row.arm, row.primary)].append(row)
    groups = []
    for (policy, key), arms in sorted(grouped.items()):
        figures = sorted((_figures(arm, primary, found) for (arm, primary), found in arms.items()), key=_order)
        group = Group(policy, key, figures)
        group.recommendation = _recommend(group, thresholds)
        groups.append(group)
    return groups


def _order(figures: ArmFigures) -> tuple[bool, str]:
    return (not figures.primary, figures.arm)


def _figures(arm: str, primary: bool, rows: list[ArmRow]) -> ArmFigures:
    seconds = np.asarray([row.seconds for row in rows if row.status == 200] or [0.0])
    agreements = [row.agreement for row in rows if row.agreement is not None]
    citations = [row.citations for row in rows if row.citations is not None]
    return ArmFigures(
        arm=arm,
        primary=primary,
        requests=len(rows),
        errors=sum(row.status != 200 for row in rows),
        p50_s=float(np.percentile(seconds, 50)),
        p95_s=float(np.percentile(seconds, 95)),
        usd_per_1000=1000 * sum(row.usd for row in rows) / len(rows),
        agreement=sum(agreements) / len(agreements) if agreements else None,
        citations=sum(citations) / len(citations) if citations else None,
    )


def _recommend(group: Group, thresholds: Thresholds) -> str:
    primaries = [arm for arm in group.arms if arm.primary]
    if not primaries:
        return "no primary answers recorded"
    primary = max(primaries, key=lambda arm: arm.requests)
    if primary.requests < thresholds.min_requests:
        return f"{primary.requests} requests so far: {thresholds.min_requests} are needed for a recommendation"
    candidates = [
        arm
        for arm in group.arms
        if not arm.primary
        and arm.error_rate <= thresholds.max_error_rate
        and arm.agreement is not None
        and arm.agreement >= thresholds.min_agreement
    ]
    cheaper = [arm for arm in candidates if arm.usd_per_1000 < primary.usd_per_1000]
    name = group.key.split(" ", 1)[1]
    if not cheaper:
        if candidates:
            return f"{name}: keep {primary.arm}; the arms that agree with it cost as much or more"
        return f"{name}: keep {primary.arm}; no arm agrees with it at {thresholds.min_agreement:g} or more"
    best = min(cheaper, key=lambda arm: arm.usd_per_1000)
    share = best.usd_per_1000 / primary.usd_per_1000 if primary.usd_per_1000 else 0.0
    cited = ", with citations" if best.citations else ""
    assert best.agreement is not None
    return (
        f"{name}: {best.arm} agrees with {primary.arm} at {best.agreement:.2f} for {share:.0%} of its cost{cited}: "
        f"route these requests to {best.arm}"
    )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_since(text: str) -> float:
    """Seconds in a span such as ``90s``, ``30m``, ``24h`` or ``7d`` (``ValueError`` for anything else)."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r} is not a span like 30m, 24h or 7d")
    return float(number) * _UNITS[unit]


__all__ = ["ArmFigures", "Group", "Thresholds", "parse_since", "report"]
