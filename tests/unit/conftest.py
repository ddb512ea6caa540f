"""Fixtures of the accounting tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.accounting.ledger import Accounting
from gateway.accounting.prices import PriceBook
from gateway.accounting.usage import TokenCounter
from gateway.metrics import Metrics
from tests.support.faulty_upstream import FaultyUpstream
from tests.support.inprocess import serve_upstream, write_adapter
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
    """The accounting's clock, moved only by the test: the ledgers' timers and first-token time, and the
    stream's per-chunk waits read it."""
    fake = FakeTime()
    monkeypatch.setattr("gateway.accounting.ledger.time", fake)
    monkeypatch.setattr("gateway.dispatch.events.time", fake)
    return fake


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FaultyUpstream]:
    """The fault-injecting upstream of a module's in-process completion tests."""
    async with serve_upstream() as served:
        yield served


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter directory that passes the gateway's checks."""
    return write_adapter(tmp_path_factory.mktemp("adapters") / "lora")


@pytest.fixture(scope="module")
def base_model_dir(tokenizer_file: Path) -> Path:
    """The tiny base model's directory (``make assets``): config, weights, tokenizer and chat template."""
    return tokenizer_file.parent
