"""Fixtures of the accounting tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.accounting.ledger import Accounting
from gateway.accounting.prices import PriceBook
from gateway.accounting.usage import TokenCounter
from gateway.metrics import Metrics
from tests.unit.accounting_support import (
    GPT_PRICE,
    TOKENIZER,
    FakeTime,
    costs,
)


@pytest.fixture(scope="module")
def tokenizer_file() -> Path:
    if not TOKENIZER.is_file():
        pytest.fail(f"{TOKENIZER} is missing: run `make assets` to build the tiny model first")
    return TOKENIZER


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def accounting(metrics: Metrics) -> Accounting:
    prices = PriceBook(costs(openai={"gpt-4o-mini": GPT_PRICE}), ["gpt-4o-mini"])
    return Accounting(metrics, prices, TokenCounter(None))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """The ledgers' clock, moved only by the test (their timers and first-token time read it)."""
    fake = FakeTime()
    monkeypatch.setattr("gateway.accounting.ledger.time", fake)
    return fake
