"""Prices: OpenAI prices from litellm's map and overrides, vLLM GPU time apportioned by tokens, dollar figures.

Pure logic: no network, no vLLM; the metrics are a real registry."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.accounting.ledger import dollars
from gateway.accounting.prices import PriceBook
from gateway.config.model import (
    TokenPriceConfig,
)
from gateway.config.prices import PriceError, TokenPrice, litellm_price_map, openai_price
from tests.unit.accounting_support import (
    COMPLETION_TPS,
    FT_MODEL,
    GPT_PRICE,
    GPU_HOUR,
    GPUS,
    PROMPT_TPS,
    costs,
    litellm_file,
    map_entry,
)


def test_override_wins_over_the_price_map() -> None:
    config = costs(openai={"gpt-x": TokenPriceConfig(input=1.0, output=2.0, cached_input=0.5)})
    price = openai_price("gpt-x", config, {"gpt-x": map_entry(9e-6, 9e-6, 9e-6)})
    assert price.input == pytest.approx(1e-6)
    assert price.output == pytest.approx(2e-6)
    assert price.cached_input == pytest.approx(0.5e-6)


def test_override_without_cached_price_charges_cached_tokens_as_input() -> None:
    price = openai_price("gpt-x", costs(openai={"gpt-x": TokenPriceConfig(input=3.0, output=4.0)}), {})
    assert price.cached_input == price.input == pytest.approx(3e-6)


def test_exact_name_from_the_price_map() -> None:
    prices = {"gpt-x": map_entry(2e-6, 8e-6, 1e-6), "gpt-x-mini": map_entry(1e-7, 1e-7, 1e-7)}
    assert openai_price("gpt-x", costs(), prices) == TokenPrice(2e-6, 8e-6, 1e-6)


def test_openai_prefixed_name_in_the_price_map() -> None:
    assert openai_price("gpt-x", costs(), {"openai/gpt-x": map_entry(2e-6, 8e-6)}) == TokenPrice(2e-6, 8e-6, 2e-6)


def test_fine_tune_takes_the_price_of_its_ft_base_entry() -> None:
    prices = {
        "ft:gpt-4o-mini-2024-07-18": map_entry(3e-7, 1.2e-6, 1.5e-7),
        "gpt-4o-mini-2024-07-18": map_entry(1.5e-7, 6e-7, 7.5e-8),
    }
    assert openai_price(FT_MODEL, costs(), prices) == TokenPrice(3e-7, 1.2e-6, 1.5e-7)


def test_fine_tune_falls_back_to_its_base_model() -> None:
    prices = {"gpt-4o-mini-2024-07-18": map_entry(1.5e-7, 6e-7, 7.5e-8)}
    assert openai_price(FT_MODEL, costs(), prices) == TokenPrice(1.5e-7, 6e-7, 7.5e-8)


def test_unknown_model_is_an_error_naming_the_config_key() -> None:
    with pytest.raises(PriceError, match=r"costs\.openai\.models") as caught:
        openai_price("gpt-nope", costs(), {"gpt-x": map_entry(1e-6, 1e-6)})
    assert "gpt-nope" in str(caught.value)


def test_entry_without_prices_is_not_a_price() -> None:
    prices: dict[str, Any] = {"gpt-x": {"mode": "chat"}, "openai/gpt-x": {"input_cost_per_token": 1e-6}}
    with pytest.raises(PriceError):
        openai_price("gpt-x", costs(), prices)


def test_cached_tokens_are_priced_at_the_cache_read_cost() -> None:
    price = openai_price("gpt-x", costs(), {"gpt-x": map_entry(2e-6, 8e-6, 0.5e-6)})
    assert price.cost(1000, 10, cached=400) == pytest.approx(600 * 2e-6 + 400 * 0.5e-6 + 10 * 8e-6, rel=1e-12)


def test_without_a_cache_read_cost_cached_tokens_cost_as_input() -> None:
    price = openai_price("gpt-x", costs(), {"gpt-x": map_entry(2e-6, 8e-6)})
    assert price.cost(1000, 10, cached=400) == pytest.approx(price.cost(1000, 10))


def test_cached_tokens_are_clamped_to_the_prompt() -> None:
    price = TokenPrice(input=2e-6, output=8e-6, cached_input=0.5e-6)
    assert price.cost(100, 0, cached=500) == pytest.approx(100 * 0.5e-6, rel=1e-12)
    assert price.cost(100, 0, cached=-5) == pytest.approx(100 * 2e-6, rel=1e-12)


def test_real_price_map_prices_the_fine_tune_as_litellm_file_says() -> None:
    entry = litellm_file()["ft:gpt-4o-mini-2024-07-18"]
    expected = TokenPrice(
        float(entry["input_cost_per_token"]),
        float(entry["output_cost_per_token"]),
        float(entry.get("cache_read_input_token_cost", entry["input_cost_per_token"])),
    )
    prices = litellm_price_map()
    assert openai_price("ft:gpt-4o-mini-2024-07-18", costs(), prices) == expected
    assert openai_price(FT_MODEL, costs(), prices) == expected


def test_price_book_prices_openai_models_from_the_real_map() -> None:
    entry = litellm_file()["ft:gpt-4o-mini-2024-07-18"]
    book = PriceBook(costs(), [FT_MODEL])
    cached_price = float(entry.get("cache_read_input_token_cost", entry["input_cost_per_token"]))
    expected = 800 * entry["input_cost_per_token"] + 200 * cached_price + 100 * entry["output_cost_per_token"]
    assert book.generation(FT_MODEL, 1000, 100, cached=200) == pytest.approx(expected, rel=1e-12)


def test_price_book_refuses_an_openai_model_without_a_price() -> None:
    with pytest.raises(PriceError, match=r"costs\.openai\.models"):
        PriceBook(costs(), ["gpt-surely-not-a-model-2099"])


def test_price_book_does_not_read_the_map_when_every_model_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> dict[str, Any]:
        raise AssertionError("the price map was read")

    monkeypatch.setattr("gateway.accounting.prices.litellm_price_map", unreadable)
    book = PriceBook(costs(openai={"gpt-4o-mini": GPT_PRICE}), ["gpt-4o-mini"])
    assert book.generation("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)


def test_vllm_request_is_charged_its_share_of_replica_time() -> None:
    book = PriceBook(costs(), [])
    expected = 2 * 3.6 / 3600 * (0.5 + 0.5)
    assert book.generation(None, 500, 50) == pytest.approx(expected, rel=1e-12)
    assert book.generation(None, 500, 50) == pytest.approx(0.002, rel=1e-12)


def test_replica_busy_for_an_hour_costs_its_hourly_price() -> None:
    book = PriceBook(costs(), [])
    # Half an hour of prompt processing and half an hour of generation, in one request or in many.
    prompt, completion = int(PROMPT_TPS * 1800), int(COMPLETION_TPS * 1800)
    assert book.generation(None, prompt, completion) == pytest.approx(GPU_HOUR * GPUS, rel=1e-12)
    many = sum(book.generation(None, 500, 50) for _ in range(3600))
    assert many == pytest.approx(GPU_HOUR * GPUS, rel=1e-9)


def test_vllm_cached_prompt_tokens_cost_as_prompt_tokens() -> None:
    book = PriceBook(costs(), [])
    assert book.generation(None, 500, 50, cached=400) == pytest.approx(book.generation(None, 500, 50), rel=1e-12)


def test_unpriced_gpus_make_self_hosted_routes_free() -> None:
    free = PriceBook(costs(gpu_hour_usd=0.0), [])
    assert free.generation(None, 10_000, 10_000) == 0.0
    assert free.self_hosted_priced is False
    assert PriceBook(costs(), []).self_hosted_priced is True


def test_retrieval_prices_come_from_the_config() -> None:
    book = PriceBook(costs(embedding=0.5, search=0.002), [])
    assert book.embedding_per_token == pytest.approx(0.5e-6)
    assert book.search_per_query == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("cost", "text"),
    [
        (4.2e-06, "0.0000042"),
        (1.23e-05, "0.0000123"),
        (0.0, "0"),
        (0.002, "0.002"),
        (1e-10, "0.0000000001"),
        (5.666666666666668e-06, "0.000005666666667"),  # 10 significant digits, not every digit of the float
        (12.5, "12.5"),
    ],
)
def test_dollars_known_values(cost: float, text: str) -> None:
    assert dollars(cost) == text


@given(st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_dollars_is_fixed_point_to_ten_significant_digits(cost: float) -> None:
    text = dollars(cost)
    assert "e" not in text.lower()
    assert float(text) == pytest.approx(cost, rel=5e-10, abs=0)
    assert len(text.lstrip("0.").replace(".", "").rstrip("0")) <= 10
