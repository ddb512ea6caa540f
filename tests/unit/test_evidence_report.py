"""The report on recorded arms: figures per policy and intent against ones computed by hand, and the
recommendation's rule (the cheapest arm that agrees and rarely fails, if cheaper than the primary)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.evidence.report import Thresholds, report
from gateway.evidence.store import ArmRow

ROW = ArmRow(
    at=0.0, request_id="r", policy="support-bot", rule="pricing", intent="pricing", arm="adapter:formal",
    primary=True, status=200, error=None, seconds=0.1, ttft_seconds=None, prompt_tokens=10, completion_tokens=5,
    usd=0.002, agreement=None, citations=None, best_score=None,
)  # fmt: skip
RAG = "rag:handbook+adapter:formal"


def _rows(n: int, rag_agreement: float, rag_usd: float) -> list[ArmRow]:
    rows = []
    for i in range(n):
        rows.append(replace(ROW, request_id=f"r{i}", seconds=0.1 + i / 1000))
        rows.append(replace(ROW, request_id=f"r{i}", arm=RAG, primary=False, seconds=0.2, usd=rag_usd,
                            agreement=rag_agreement, citations=3))  # fmt: skip
        failed = i % 10 == 0  # one in ten of the OpenAI arm's calls fails
        rows.append(replace(ROW, request_id=f"r{i}", arm="openai:ft:x", primary=False, seconds=0.5, usd=0.0001,
                            agreement=None if failed else 0.95, status=502 if failed else 200))  # fmt: skip
    return rows


def test_figures_per_arm_are_the_hand_computed_ones() -> None:
    [group] = report(_rows(40, 0.91, 0.00076))
    assert (group.policy, group.key) == ("support-bot", "intent pricing")
    primary, openai, rag = group.arms
    assert (primary.arm, primary.primary, primary.requests) == ("adapter:formal", True, 40)
    assert primary.p50_s == pytest.approx(0.1195)  # the median of 0.100 ... 0.139
    assert primary.usd_per_1000 == pytest.approx(2.0)
    assert rag.agreement == pytest.approx(0.91)
    assert rag.citations == 3
    assert openai.error_rate == pytest.approx(0.1)
    assert openai.p95_s == pytest.approx(0.5)


def test_the_recommendation_names_the_cheapest_arm_that_agrees() -> None:
    [group] = report(_rows(40, 0.91, 0.00076))
    assert group.recommendation == (
        f"pricing: {RAG} agrees with adapter:formal at 0.91 for 38% of its cost, with citations: "
        f"route these requests to {RAG}"
    )  # the OpenAI arm is cheaper still, but fails one call in ten


def test_no_recommendation_without_agreement_or_enough_requests() -> None:
    [disagreeing] = report(_rows(40, 0.6, 0.00076))
    assert disagreeing.recommendation == "pricing: keep adapter:formal; no arm agrees with it at 0.85 or more"
    [dear] = report(_rows(40, 0.9, 0.003))
    assert dear.recommendation == "pricing: keep adapter:formal; the arms that agree with it cost as much or more"
    [few] = report(_rows(5, 0.91, 0.00076), Thresholds(min_requests=20))
    assert few.recommendation == "5 requests so far: 20 are needed for a recommendation"
    [by_rule] = report([replace(row, intent=None) for row in _rows(3, 0.9, 0.001)])
    assert by_rule.key == "rule pricing"
