"""Accounting: prices, usage and token counts, the per-request ledger, and a stream's closing event.

Pure logic: no network, no vLLM. The only fake is the upstream of ``accounted_events``, an in-process
async generator of byte chunks; the metrics are a real :class:`gateway.metrics.Metrics` registry.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway.dispatch.events as events_module
from gateway.accounting.ledger import CLIENT_LEFT, Accounting, Ledger, dollars
from gateway.accounting.prices import PriceBook, PriceError, TokenPrice, litellm_price_map, openai_price
from gateway.accounting.usage import TokenCounter, Usage, generated_texts, prompt_texts, usage_of, usage_of_body
from gateway.api.protocol import Endpoint
from gateway.config.model import (
    CostsConfig,
    OpenAICostConfig,
    RagCostConfig,
    TokenPriceConfig,
    VllmCostConfig,
)
from gateway.dispatch.answers import written_answer
from gateway.dispatch.events import accounted_events
from gateway.errors import ModelNotFound, UpstreamTimeout
from gateway.metrics import Metrics
from routing import Target, TargetKind

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / ".turnout" / "assets" / "model" / "tokenizer.json"

GPU_HOUR = 3.6
GPUS = 2
PROMPT_TPS = 1000.0
COMPLETION_TPS = 100.0
PER_SECOND = GPU_HOUR * GPUS / 3600  # dollars per replica-second
EMBEDDING_PER_1M = 0.1
SEARCH_PER_QUERY = 0.001

BASE = Target(TargetKind.BASE, "tiny")
ADAPTER = Target(TargetKind.ADAPTER, "sql")
RAG = Target(TargetKind.RAG, "docs", generator=ADAPTER)
GPT = Target(TargetKind.OPENAI, "gpt-4o-mini")
GPT_PRICE = TokenPriceConfig(input=0.15, output=0.6, cached_input=0.075)

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme::abc123"


def costs(
    gpu_hour_usd: float = GPU_HOUR,
    openai: dict[str, TokenPriceConfig] | None = None,
    embedding: float = EMBEDDING_PER_1M,
    search: float = SEARCH_PER_QUERY,
) -> CostsConfig:
    return CostsConfig(
        vllm=VllmCostConfig(
            gpu_hour_usd=gpu_hour_usd,
            gpus_per_replica=GPUS,
            prompt_tokens_per_second=PROMPT_TPS,
            completion_tokens_per_second=COMPLETION_TPS,
        ),
        openai=OpenAICostConfig(models=openai or {}),
        rag=RagCostConfig(embedding_usd_per_1m_tokens=embedding, search_usd_per_query=search),
    )


def vllm_cost(prompt: int, completion: int) -> float:
    """The README's formula, written out independently of the code under test."""
    return GPU_HOUR * GPUS / 3600 * (prompt / PROMPT_TPS + completion / COMPLETION_TPS)


def map_entry(prompt: float, completion: float, cached: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"input_cost_per_token": prompt, "output_cost_per_token": completion, "mode": "chat"}
    if cached is not None:
        entry["cache_read_input_token_cost"] = cached
    return entry


# --------------------------------------------------------------------------------------------------
# prices: OpenAI


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


def _litellm_file() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None, "litellm is not installed"
    assert spec.submodule_search_locations, "litellm is not a package"
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_real_price_map_prices_the_fine_tune_as_litellm_file_says() -> None:
    entry = _litellm_file()["ft:gpt-4o-mini-2024-07-18"]
    expected = TokenPrice(
        float(entry["input_cost_per_token"]),
        float(entry["output_cost_per_token"]),
        float(entry.get("cache_read_input_token_cost", entry["input_cost_per_token"])),
    )
    prices = litellm_price_map()
    assert openai_price("ft:gpt-4o-mini-2024-07-18", costs(), prices) == expected
    assert openai_price(FT_MODEL, costs(), prices) == expected


def test_price_book_prices_openai_models_from_the_real_map() -> None:
    entry = _litellm_file()["ft:gpt-4o-mini-2024-07-18"]
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


# --------------------------------------------------------------------------------------------------
# prices: vLLM GPU time apportioned by tokens


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


# --------------------------------------------------------------------------------------------------
# usage


def test_usage_of_without_details() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    assert usage_of(body) == Usage(10, 5, 0, estimated=False)


def test_usage_of_with_cached_tokens() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}}
    assert usage_of(body) == Usage(10, 5, 3)


def test_usage_of_with_null_cached_tokens() -> None:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": None}}}
    assert usage_of(body) == Usage(10, 5, 0)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "usage",
        {},
        {"usage": None},
        {"usage": []},
        {"usage": {"prompt_tokens": 10}},
        {"usage": {"completion_tokens": 10}},
        {"usage": {"prompt_tokens": "10", "completion_tokens": 5}},
        {"usage": {"prompt_tokens": 1.5, "completion_tokens": 5}},
        {"usage": {"prompt_tokens": 10, "completion_tokens": None}},
    ],
)
def test_usage_of_invalid_shapes(body: Any) -> None:
    assert usage_of(body) is None


def test_usage_of_body() -> None:
    assert usage_of_body(b'{"usage":{"prompt_tokens":7,"completion_tokens":2}}') == Usage(7, 2)


@pytest.mark.parametrize("body", [b"", b"not json", b'{"usage":', b"\xff\xfe", b"[1, 2]", b"null"])
def test_usage_of_body_invalid(body: bytes) -> None:
    assert usage_of_body(body) is None


def test_usage_as_openai() -> None:
    assert Usage(7, 2).as_openai() == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert Usage(7, 2).total == 9


def test_prompt_texts_chat() -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                    {"type": "text", "text": "LoRA?"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    }
    assert prompt_texts("chat", data) == (["Be brief.", "What is", "LoRA?"], 4 * 3 + 3)


def test_prompt_texts_completions_string_and_strings() -> None:
    assert prompt_texts("completions", {"prompt": "Once upon"}) == (["Once upon"], 0)
    assert prompt_texts("completions", {"prompt": ["a", "bc"]}) == (["a", "bc"], 0)


def test_prompt_texts_completions_token_arrays() -> None:
    assert prompt_texts("completions", {"prompt": [[1, 2, 3], [4, 5]]}) == ([], 5)


def test_prompt_texts_completions_flat_token_array() -> None:
    assert prompt_texts("completions", {"prompt": [1, 2, 3]}) == ([], 3)


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body)


def test_generated_texts_chat_deltas() -> None:
    events = [
        _chat_chunk({"role": "assistant", "content": ""}),
        _chat_chunk({"content": "Hel"}),
        b": ping",
        _chat_chunk({"content": "lo"}),
        _chat_chunk({}, finish="stop"),
        b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b"data: [DONE]",
    ]
    assert generated_texts("chat", events) == ["", "Hel", "lo"]


def test_generated_texts_whole_chat_message() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}}]}
    assert generated_texts("chat", [orjson.dumps(body)]) == ["Hello there"]


def test_generated_texts_completions() -> None:
    events = [
        b'data: {"choices":[{"index":0,"text":"Once"}]}',
        b'data: {"choices":[{"index":0,"text":" upon"}]}',
        b"data: [DONE]",
    ]
    assert generated_texts("completions", events) == ["Once", " upon"]
    assert generated_texts("completions", [b'{"choices":[{"index":0,"text":"whole"}]}']) == ["whole"]


@pytest.fixture(scope="module")
def tokenizer_file() -> Path:
    if not TOKENIZER.is_file():
        pytest.fail(f"{TOKENIZER} is missing: run `make assets` to fetch the tiny model first")
    return TOKENIZER


TOKENIZER_TEXT = "Turnout routes each request to a LoRA adapter, to RAG, or to an OpenAI fine-tune."


def test_token_counter_counts_with_the_model_tokenizer(tokenizer_file: Path) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(tokenizer_file))
    expected = len(reference.encode(TOKENIZER_TEXT, add_special_tokens=False).ids)
    other = len(reference.encode("and a second text", add_special_tokens=False).ids)
    assert expected != len(TOKENIZER_TEXT) // 4  # so the fallback cannot pass for the tokenizer
    counter = TokenCounter(tokenizer_file)
    assert counter.count([TOKENIZER_TEXT], None) == expected
    assert counter.count([TOKENIZER_TEXT, "and a second text"], None) == expected + other


def test_token_counter_without_a_tokenizer_counts_four_characters_a_token(tmp_path: Path) -> None:
    assert TokenCounter(None).count(["abcdefgh", "abc"], None) == 11 // 4
    assert TokenCounter(tmp_path / "missing.json").count(["abcdefgh"], None) == 2
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not a tokenizer", encoding="utf-8")
    assert TokenCounter(broken).count(["abcdefgh"], None) == 2
    assert TokenCounter(None).count([], None) == 0


def test_estimate_is_marked_estimated() -> None:
    data = {"messages": [{"role": "system", "content": "abcdefgh"}, {"role": "user", "content": "abcd"}]}
    usage = TokenCounter(None).estimate("chat", data, ["Hel", "lo"], None)
    assert usage == Usage((8 + 4) // 4 + 4 * 2 + 3, len("Hello") // 4, 0, estimated=True)
    assert TokenCounter(None).estimate("completions", {"prompt": "abcdefgh"}, [], None) == Usage(2, 0, estimated=True)


def test_openai_models_are_counted_by_the_openai_counter(tokenizer_file: Path) -> None:
    calls: list[tuple[str, str]] = []

    def openai_count(model: str, text: str) -> int:
        calls.append((model, text))
        return 7

    counter = TokenCounter(tokenizer_file, openai_count=openai_count)
    assert counter.count(["a", "b"], "gpt-4o-mini") == 14
    assert calls == [("gpt-4o-mini", "a"), ("gpt-4o-mini", "b")]
    assert counter.estimate("completions", {"prompt": "hi"}, ["x"], "gpt-4o-mini") == Usage(7, 7, estimated=True)
    calls.clear()
    counter.count([TOKENIZER_TEXT], None)  # vLLM targets use the tokenizer, not the OpenAI counter
    assert calls == []


# --------------------------------------------------------------------------------------------------
# dollars


@pytest.mark.parametrize(
    ("cost", "text"),
    [(4.2e-06, "0.0000042"), (1.23e-05, "0.0000123"), (0.0, "0.0"), (0.002, "0.002"), (1e-10, "0.0000000001")],
)
def test_dollars_known_values(cost: float, text: str) -> None:
    assert dollars(cost) == text


@given(st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_dollars_is_fixed_point_and_round_trips(cost: float) -> None:
    text = dollars(cost)
    assert "e" not in text.lower()
    assert float(text) == cost


# --------------------------------------------------------------------------------------------------
# Ledger and Accounting


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def accounting(metrics: Metrics) -> Accounting:
    prices = PriceBook(costs(openai={"gpt-4o-mini": GPT_PRICE}), ["gpt-4o-mini"])
    return Accounting(metrics, prices, TokenCounter(None))


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def route_labels(policy: str, target: Target | None) -> dict[str, str]:
    if target is None:
        return {"policy": policy, "route_kind": "none", "target": "none"}
    return {"policy": policy, "route_kind": target.kind.value, "target": target.label}


def requests_total(metrics: Metrics, endpoint: str, policy: str, target: Target | None, status: int) -> float | None:
    labels = {"endpoint": endpoint, **route_labels(policy, target), "status": str(status)}
    return sample(metrics, "turnout_requests_total", **labels)


CHAT_DATA: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "abcdefgh"}]}


def routed_ledger(
    accounting: Accounting,
    target: Target,
    *,
    stream: bool = False,
    opened: bool = True,
    data: dict[str, Any] | None = None,
    endpoint: Endpoint = "chat",
    policy: str = "tiny",
) -> Ledger:
    ledger = accounting.open(endpoint, time.perf_counter())
    ledger.routed(policy, dict(data if data is not None else CHAT_DATA, stream=stream), stream)
    ledger.target = target
    ledger.opened = opened
    return ledger


def test_settle_with_usage_adds_generation_embedding_and_search(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, RAG)
    ledger.retrievals = 1
    ledger.embedding_tokens = 12
    cost = ledger.settle(Usage(500, 50))
    assert cost == pytest.approx(vllm_cost(500, 50) + 12 * EMBEDDING_PER_1M * 1e-6 + SEARCH_PER_QUERY, rel=1e-12)
    assert ledger.cost == cost
    assert ledger.usage == Usage(500, 50)


def test_settle_prices_openai_targets_per_token(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, GPT)
    cost = ledger.settle(Usage(1000, 100, cached=200))
    assert cost == pytest.approx((800 * 0.15 + 200 * 0.075 + 100 * 0.6) * 1e-6, rel=1e-12)


def test_settle_is_fixed_once(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE)
    first = ledger.settle(Usage(500, 50))
    assert ledger.settle(Usage(5000, 500)) == first
    assert ledger.usage == Usage(500, 50)


def test_settle_without_usage_estimates_from_the_events(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, stream=True)
    ledger.events += [_chat_chunk({"role": "assistant", "content": ""}), _chat_chunk({"content": "Hello world!"})]
    cost = ledger.settle(None)
    # TokenCounter(None): one message of 8 characters (2) + framing 4 + 3; "Hello world!" 12 characters (3).
    assert ledger.usage == Usage(2 + 4 + 3, 3, estimated=True)
    assert cost == pytest.approx(vllm_cost(9, 3), rel=1e-12)


def test_settle_without_usage_estimates_a_whole_answer(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, endpoint="completions", data={"model": "tiny", "prompt": "abcdefgh"})
    ledger.events.append(b'{"choices":[{"index":0,"text":"abcdefgh"}]}')
    ledger.settle(None)
    assert ledger.usage == Usage(2, 2, estimated=True)


def test_settle_without_usage_when_nothing_was_opened_costs_only_retrieval(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, RAG, opened=False)
    ledger.events.append(_chat_chunk({"content": "Hello world!"}))
    ledger.retrievals = 1
    assert ledger.settle(None) == pytest.approx(SEARCH_PER_QUERY)
    assert ledger.usage is None


def test_finish_records_once(accounting: Accounting, metrics: Metrics) -> None:
    ledger = routed_ledger(accounting, RAG)
    ledger.retrievals = 1
    ledger.embedding_tokens = 20
    ledger.upstream_s = 0.5
    ledger.settle(Usage(500, 50))
    assert sample(metrics, "turnout_in_flight_requests") == 1
    ledger.finish(200)
    ledger.finish(200)
    ledger.finish(CLIENT_LEFT)
    labels = route_labels("tiny", RAG)
    assert requests_total(metrics, "chat", "tiny", RAG, 200) == 1
    assert requests_total(metrics, "chat", "tiny", RAG, CLIENT_LEFT) is None
    assert sample(metrics, "turnout_tokens_total", **labels, direction="prompt") == 500
    assert sample(metrics, "turnout_tokens_total", **labels, direction="completion") == 50
    generation = sample(metrics, "turnout_cost_dollars_total", **labels, component="generation")
    embedding = sample(metrics, "turnout_cost_dollars_total", **labels, component="embedding")
    search = sample(metrics, "turnout_cost_dollars_total", **labels, component="search")
    assert generation == pytest.approx(vllm_cost(500, 50), rel=1e-9)
    assert embedding == pytest.approx(20 * EMBEDDING_PER_1M * 1e-6, rel=1e-12)
    assert search == pytest.approx(SEARCH_PER_QUERY, rel=1e-12)
    assert sample(metrics, "turnout_usage_estimated_total", route_kind="rag") == 0
    assert sample(metrics, "turnout_in_flight_requests") == 0
    assert sample(metrics, "turnout_request_duration_seconds_count", **labels, stream="false") == 1
    assert sample(metrics, "turnout_request_duration_seconds_count", **labels, stream="true") == 0
    assert sample(metrics, "turnout_upstream_duration_seconds_count", backend="vllm", route_kind="rag") == 1
    assert sample(metrics, "turnout_upstream_duration_seconds_sum", backend="vllm", route_kind="rag") == 0.5


def test_finish_counts_estimated_usage(accounting: Accounting, metrics: Metrics) -> None:
    ledger = routed_ledger(accounting, BASE, stream=True)
    ledger.events.append(_chat_chunk({"content": "Hello world!"}))
    ledger.finish(CLIENT_LEFT)
    labels = route_labels("tiny", BASE)
    assert requests_total(metrics, "chat", "tiny", BASE, CLIENT_LEFT) == 1
    assert sample(metrics, "turnout_usage_estimated_total", route_kind="base") == 1
    assert sample(metrics, "turnout_tokens_total", **labels, direction="prompt") == 9
    assert sample(metrics, "turnout_tokens_total", **labels, direction="completion") == 3
    assert sample(metrics, "turnout_request_duration_seconds_count", **labels, stream="true") == 1


def test_in_flight_follows_open_ledgers(accounting: Accounting, metrics: Metrics) -> None:
    first = accounting.open("chat", time.perf_counter())
    second = accounting.open("completions", time.perf_counter())
    assert sample(metrics, "turnout_in_flight_requests") == 2
    first.finish(200)
    first.finish(200)
    assert sample(metrics, "turnout_in_flight_requests") == 1
    second.fail(ModelNotFound("no such model"))
    second.finish(404)
    assert sample(metrics, "turnout_in_flight_requests") == 0


def test_gateway_overhead_excludes_the_waits(accounting: Accounting, metrics: Metrics) -> None:
    ledger = accounting.open("chat", time.perf_counter() - 1.0)  # arrived a second ago
    ledger.routed("tiny", CHAT_DATA, False)
    ledger.target = BASE
    ledger.opened = True
    ledger.upstream_s = 0.6
    ledger.excluded_s = 0.3
    ledger.finish(200)
    overhead = sample(metrics, "turnout_gateway_overhead_seconds_sum", route_kind="base", stream="false")
    duration = sample(metrics, "turnout_request_duration_seconds_sum", **route_labels("tiny", BASE), stream="false")
    assert duration is not None
    assert overhead is not None
    assert duration >= 1.0
    assert overhead == pytest.approx(duration - 0.9, abs=1e-9)


def test_fail_tells_what_was_spent_and_counts_the_error_once(accounting: Accounting, metrics: Metrics) -> None:
    ledger = routed_ledger(accounting, RAG, opened=False)
    ledger.retrievals = 1
    error = UpstreamTimeout("the generator did not answer")
    ledger.fail(error)
    assert error.headers["x-turnout-cost-usd"] == dollars(SEARCH_PER_QUERY) == "0.001"
    assert float(error.headers["x-turnout-cost-usd"]) == ledger.cost
    accounting.count_error(error)
    ledger.fail(error)
    assert sample(metrics, "turnout_errors_total", type="upstream_timeout") == 1
    assert requests_total(metrics, "chat", "tiny", RAG, 504) == 1


def test_fail_of_an_opened_request_tells_the_estimate(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, stream=True)
    ledger.events.append(_chat_chunk({"content": "Hello world!"}))
    error = UpstreamTimeout("went silent")
    ledger.fail(error)
    assert error.headers["x-turnout-cost-usd"] == dollars(ledger.cost or -1.0)
    assert float(error.headers["x-turnout-cost-usd"]) == pytest.approx(vllm_cost(9, 3), rel=1e-12)
    assert ledger.usage == Usage(9, 3, estimated=True)


def test_count_error_counts_once(accounting: Accounting, metrics: Metrics) -> None:
    error = ModelNotFound("no such model")
    accounting.count_error(error)
    accounting.count_error(error)
    assert error.counted is True
    assert sample(metrics, "turnout_errors_total", type="model_not_found") == 1


def test_unknown_model_is_counted_under_policy_none(accounting: Accounting, metrics: Metrics) -> None:
    ledger = accounting.open("chat", time.perf_counter())
    error = ModelNotFound("the model 'who-knows' does not exist")
    ledger.fail(error)
    assert error.headers["x-turnout-cost-usd"] == "0.0"
    assert requests_total(metrics, "chat", "none", None, 404) == 1
    labels = route_labels("none", None)
    assert sample(metrics, "turnout_request_duration_seconds_count", **labels, stream="false") == 1
    exposition = metrics.exposition().decode()
    assert "who-knows" not in exposition
    assert 'route_kind="none"' in exposition


def test_ttft_is_observed_only_with_a_first_token(accounting: Accounting, metrics: Metrics) -> None:
    labels = route_labels("tiny", BASE)
    silent = routed_ledger(accounting, BASE, stream=True)
    silent.finish(200)
    assert sample(metrics, "turnout_time_to_first_token_seconds_count", **labels) == 0
    speaking = routed_ledger(accounting, BASE, stream=True)
    speaking.first_token_at = speaking.started + 0.25
    speaking.finish(200)
    assert sample(metrics, "turnout_time_to_first_token_seconds_count", **labels) == 1
    assert sample(metrics, "turnout_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------
# accounted_events: a stream on its way to the client

# vLLM's first chat chunk, serialized without spaces: it announces the role and has no text yet
ROLE_CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
)
USAGE_BODY: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "tiny",
    "choices": [],
    "usage": {"prompt_tokens": 500, "total_tokens": 550, "completion_tokens": 50},
}
USAGE_EVENT = b"data: " + orjson.dumps(USAGE_BODY)
DONE = b"data: [DONE]"
TEXT_EVENTS = [
    ROLE_CHUNK,
    _chat_chunk({"content": "Hello"}),
    _chat_chunk({"content": " world!"}),
    _chat_chunk({}, finish="stop"),
]


def wire(*events: bytes) -> bytes:
    return b"".join(event + b"\n\n" for event in events)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def upstream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def relay(chunks: list[bytes], ledger: Ledger, citations: list[dict[str, Any]] | None = None) -> list[bytes]:
    return [event async for event in accounted_events(upstream(chunks), ledger, citations)]


def stream_ledger(accounting: Accounting, *, wants_usage: bool, endpoint: Endpoint = "chat") -> Ledger:
    data: dict[str, Any] = dict(CHAT_DATA) if endpoint == "chat" else {"model": "tiny", "prompt": "abcdefgh"}
    if wants_usage:
        data["stream_options"] = {"include_usage": True}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data, endpoint=endpoint)
    assert ledger.wants_usage is wants_usage
    return ledger


def parsed(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: "), event
    assert event.endswith(b"\n\n"), event
    body = orjson.loads(event[len(b"data: ") : -2])
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize("size", [1, 7, 64, 100_000], ids=["bytes", "7", "64", "one-chunk"])
async def test_events_are_re_split_but_byte_identical(accounting: Accounting, size: int) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    out = await relay(pieces(wire(*TEXT_EVENTS, USAGE_EVENT, DONE), size), ledger)
    assert out[:-2] == [event + b"\n\n" for event in TEXT_EVENTS]
    assert out[-1] == DONE + b"\n\n"
    for event in out:
        assert event.endswith(b"\n\n")
        assert b"\n\n" not in event[:-2]
    assert ledger.events == TEXT_EVENTS


async def test_without_usage_asked_the_usage_event_is_dropped(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    out = await relay([wire(*TEXT_EVENTS, USAGE_EVENT, DONE)], ledger)
    assert not any(b'"usage"' in event for event in out)
    closing = parsed(out[-2])
    assert closing["choices"] == []
    assert "usage" not in closing
    assert closing["object"] == "chat.completion.chunk"
    assert closing["model"] == "tiny"
    assert closing["turnout"] == {"cost_usd": ledger.cost, "estimated": False}
    assert ledger.cost == pytest.approx(vllm_cost(500, 50), rel=1e-12)
    assert ledger.usage == Usage(500, 50)


async def test_with_usage_asked_the_closing_event_is_the_usage_event(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=True)
    out = await relay([wire(*TEXT_EVENTS, USAGE_EVENT, DONE)], ledger)
    assert out[:-2] == [event + b"\n\n" for event in TEXT_EVENTS]
    closing = parsed(out[-2])
    assert closing == {**USAGE_BODY, "turnout": {"cost_usd": ledger.cost, "estimated": False}}
    assert ledger.cost == pytest.approx(vllm_cost(500, 50), rel=1e-12)
    assert sum(b'"usage"' in event for event in out) == 1


def _last_chunk_with_usage() -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 550},
    }
    return b"data: " + orjson.dumps(body)


async def test_usage_on_a_chunk_with_choices_is_stripped_when_not_asked(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    last = _last_chunk_with_usage()
    out = await relay([wire(*TEXT_EVENTS[:-1], last, DONE)], ledger)
    stripped = {k: v for k, v in parsed(last + b"\n\n").items() if k != "usage"}
    assert parsed(out[-3]) == stripped
    assert not any(b'"usage"' in event for event in out)
    assert ledger.usage == Usage(500, 50)
    assert parsed(out[-2])["turnout"] == {"cost_usd": ledger.cost, "estimated": False}


async def test_usage_on_a_chunk_with_choices_is_unchanged_when_asked(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=True)
    last = _last_chunk_with_usage()
    out = await relay([wire(*TEXT_EVENTS[:-1], last, DONE)], ledger)
    assert out[-3] == last + b"\n\n"
    assert ledger.usage == Usage(500, 50)
    closing = parsed(out[-2])
    assert "usage" not in closing  # the client had it already
    assert closing["turnout"] == {"cost_usd": ledger.cost, "estimated": False}


@pytest.mark.parametrize("wants_usage", [False, True])
async def test_without_upstream_usage_the_closing_event_is_an_estimate(
    accounting: Accounting, wants_usage: bool
) -> None:
    ledger = stream_ledger(accounting, wants_usage=wants_usage)
    out = await relay([wire(*TEXT_EVENTS, DONE)], ledger)
    assert out[:-2] == [event + b"\n\n" for event in TEXT_EVENTS]
    # TokenCounter(None): "abcdefgh" (2) + framing 4 + 3; "Hello world!" 12 characters (3)
    assert ledger.usage == Usage(9, 3, estimated=True)
    closing = parsed(out[-2])
    assert closing["turnout"] == {"cost_usd": pytest.approx(vllm_cost(9, 3), rel=1e-12), "estimated": True}
    assert closing["turnout"]["cost_usd"] == ledger.cost
    if wants_usage:
        assert closing["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    else:
        assert "usage" not in closing


@pytest.mark.parametrize("wants_usage", [False, True])
async def test_citations_ride_on_the_closing_event(accounting: Accounting, wants_usage: bool) -> None:
    citations: list[dict[str, Any]] = [{"n": 1, "source": "guide.md", "snippet": "LoRA adapters"}]
    ledger = stream_ledger(accounting, wants_usage=wants_usage)
    out = await relay([wire(*TEXT_EVENTS, USAGE_EVENT, DONE)], ledger, citations)
    assert parsed(out[-2])["citations"] == citations
    assert not any(b'"citations"' in event for event in out[:-2])


async def test_first_token_is_the_first_chunk_with_text(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    events = accounted_events(upstream([wire(ROLE_CHUNK), wire(TEXT_EVENTS[1]), wire(DONE)]), ledger, None)
    assert await anext(events) == ROLE_CHUNK + b"\n\n"
    assert ledger.first_token_at is None
    assert await anext(events) == TEXT_EVENTS[1] + b"\n\n"
    assert ledger.first_token_at is not None
    assert ledger.first_token_at >= ledger.started
    remaining = [event async for event in events]
    assert remaining[-1] == DONE + b"\n\n"


async def test_an_empty_delta_is_not_a_first_token(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    empty = b'data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}'
    events = accounted_events(upstream([wire(empty), wire(TEXT_EVENTS[1]), wire(DONE)]), ledger, None)
    await anext(events)
    assert ledger.first_token_at is None
    await anext(events)
    assert ledger.first_token_at is not None


async def test_first_token_of_a_completion_stream(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False, endpoint="completions")
    events = accounted_events(upstream([wire(b'data: {"choices":[{"index":0,"text":"Once"}]}', DONE)]), ledger, None)
    await anext(events)
    assert ledger.first_token_at is not None
    closing, done = [event async for event in events]
    assert parsed(closing)["object"] == "text_completion"
    assert done == DONE + b"\n\n"


async def test_comments_pass_through(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    out = await relay([b": ping\n\n", wire(ROLE_CHUNK), b": ping\n\nretry: 1000\n\n", wire(DONE)], ledger)
    assert out[0] == b": ping\n\n"
    assert out[1] == ROLE_CHUNK + b"\n\n"
    assert out[2:4] == [b": ping\n\n", b"retry: 1000\n\n"]
    assert ledger.events == [ROLE_CHUNK]
    assert ledger.first_token_at is None


class FakeTime:
    """Stands in for the ``time`` module inside gateway.dispatch.events: a clock only the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0


async def test_upstream_waits_accumulate(accounting: Accounting, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(events_module, "time", clock)
    ledger = stream_ledger(accounting, wants_usage=False)
    ledger.upstream_s = 1.0  # the wait for the response headers, counted by the backend

    async def slow_upstream() -> AsyncIterator[bytes]:
        for chunk in (wire(ROLE_CHUNK), wire(TEXT_EVENTS[1]), wire(DONE)):
            clock.now += 0.5  # waiting for the upstream
            yield chunk
        clock.now += 0.25  # waiting for the connection to end

    out = [event async for event in accounted_events(slow_upstream(), ledger, None)]
    assert out[-1] == DONE + b"\n\n"
    assert ledger.upstream_s == pytest.approx(1.0 + 3 * 0.5 + 0.25)
    assert ledger.first_token_at == pytest.approx(101.0)


async def test_a_trailing_partial_event_is_passed_on(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    out = await relay([wire(ROLE_CHUNK), b'data: {"cho'], ledger)
    assert out == [ROLE_CHUNK + b"\n\n", b'data: {"cho']


def _continuous_usage_stream() -> list[bytes]:
    """vLLM with ``stream_options.continuous_usage_stats``: cumulative usage on every chunk, then the total."""

    def chunk(delta: dict[str, Any], completion: int, finish: str | None = None) -> bytes:
        body = parsed(_chat_chunk(delta, finish) + b"\n\n")
        body["usage"] = {"prompt_tokens": 10, "total_tokens": 10 + completion, "completion_tokens": completion}
        return b"data: " + orjson.dumps(body)

    final = {**USAGE_BODY, "usage": {"prompt_tokens": 10, "total_tokens": 13, "completion_tokens": 3}}
    return [
        chunk({"role": "assistant", "content": ""}, 0),
        chunk({"content": "Hel"}, 1),
        chunk({"content": "lo"}, 2),
        chunk({}, 3, finish="stop"),
        b"data: " + orjson.dumps(final),
        DONE,
    ]


async def test_continuous_usage_stats_charge_the_final_usage(accounting: Accounting) -> None:
    data = {**CHAT_DATA, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data)
    await relay([wire(*_continuous_usage_stream())], ledger)
    assert ledger.usage == Usage(10, 3)


async def test_continuous_usage_stats_without_include_usage_leak_no_usage(accounting: Accounting) -> None:
    data = {**CHAT_DATA, "stream_options": {"continuous_usage_stats": True}}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data)
    assert ledger.wants_usage is False
    out = await relay([wire(*_continuous_usage_stream())], ledger)
    assert [event for event in out if b'"usage"' in event] == []


# --------------------------------------------------------------------------------------------------
# written answers (RAG refusals) go through the same accounting


async def _answer_events(endpoint: Endpoint, ledger: Ledger) -> list[bytes]:
    answer = written_answer(endpoint, "docs-bot", "I cannot answer that from the documents.", stream=True)
    return [event async for event in accounted_events(answer.chunks(), ledger, [])]


def _refusal_ledger(accounting: Accounting, endpoint: Endpoint, wants_usage: bool) -> Ledger:
    data: dict[str, Any] = dict(CHAT_DATA) if endpoint == "chat" else {"model": "docs-bot", "prompt": "abcdefgh"}
    if wants_usage:
        data["stream_options"] = {"include_usage": True}
    ledger = routed_ledger(accounting, RAG, stream=True, data=data, endpoint=endpoint, policy="docs-bot")
    ledger.retrievals = 1
    return ledger


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_written_answer_without_usage_asked_has_no_usage(accounting: Accounting, endpoint: Endpoint) -> None:
    ledger = _refusal_ledger(accounting, endpoint, wants_usage=False)
    out = await _answer_events(endpoint, ledger)
    assert out[-1] == DONE + b"\n\n"
    assert not any(b'"usage"' in event for event in out)
    closing = parsed(out[-2])
    assert closing["choices"] == []
    assert closing["citations"] == []
    assert closing["turnout"] == {"cost_usd": pytest.approx(SEARCH_PER_QUERY), "estimated": False}
    assert ledger.usage == Usage(0, 0)
    texts = generated_texts(endpoint, [event[:-2] for event in out])
    assert "".join(texts) == "I cannot answer that from the documents."


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_written_answer_with_usage_asked_has_zero_usage(accounting: Accounting, endpoint: Endpoint) -> None:
    ledger = _refusal_ledger(accounting, endpoint, wants_usage=True)
    out = await _answer_events(endpoint, ledger)
    closing = parsed(out[-2])
    assert closing["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert closing["choices"] == []
    assert closing["turnout"] == {"cost_usd": pytest.approx(SEARCH_PER_QUERY), "estimated": False}
    assert sum(b'"usage"' in event for event in out) == 1


async def test_written_answer_whole_has_zero_usage() -> None:
    answer = written_answer("chat", "docs-bot", "No.", stream=False)
    assert usage_of_body(await answer.read()) == Usage(0, 0)


# --------------------------------------------------------------------------------------------------
# what a review of the accounting found: reloads, crashes, added prompts, long streams, in-band errors


def test_a_ledger_keeps_the_prices_it_started_with(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, GPT)
    accounting.prices = PriceBook(costs(), [])  # a reload dropped the OpenAI model meanwhile
    assert ledger.settle(Usage(1000, 100)) == pytest.approx((1000 * 0.15 + 100 * 0.6) * 1e-6, rel=1e-12)
    ledger.finish(200)
    assert requests_total(accounting.metrics, "chat", "tiny", GPT, 200) == 1


def test_a_crash_is_a_500_and_an_internal_error_counted_once(accounting: Accounting, metrics: Metrics) -> None:
    ledger = routed_ledger(accounting, BASE)
    ledger.crash()
    ledger.crash()
    assert requests_total(metrics, "chat", "tiny", BASE, 500) == 1
    assert sample(metrics, "turnout_errors_total", type="internal_error") == 1


def test_the_estimate_counts_the_prompt_the_gateway_added(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, RAG, stream=True)
    ledger.added_prompt = ["x" * 400]  # retrieved context: 100 tokens at 4 characters a token
    ledger.settle(None)
    assert ledger.usage == Usage(2 + 100 + 4 + 3, 0, estimated=True)


def test_a_request_sent_but_never_answered_is_estimated(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, opened=False)
    ledger.sent = True  # the client left before the non-streaming answer's headers came
    ledger.finish(CLIENT_LEFT)
    assert ledger.usage == Usage(2 + 4 + 3, 0, estimated=True)
    assert ledger.cost == pytest.approx(vllm_cost(9, 0), rel=1e-12)


def test_a_long_stream_keeps_a_bounded_start_and_scales_the_estimate(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, stream=True)
    event = _chat_chunk({"content": "abcd" * 64})  # 64 tokens at 4 characters a token
    for _ in range(4000):
        ledger.keep_event(event)
    kept = len(ledger.events)
    assert kept * len(event) <= 256 * 1024 < 4000 * len(event)
    ledger.settle(None)
    assert ledger.usage is not None
    assert ledger.usage.completion == pytest.approx(4000 * 64, rel=0.01)


def test_huge_texts_are_counted_by_characters_not_tokenized(tokenizer_file: Path) -> None:
    counter = TokenCounter(tokenizer_file)
    huge = "word " * 20_000  # 100k characters: counted without a tokenizer pass on the event loop
    assert counter.count([huge], None) == len(huge) // 4


async def test_an_upstream_error_event_is_kept_for_the_request_metrics(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    failure = b'data: {"error":{"message":"generation failed","type":"InternalServerError","code":500}}'
    out = await relay([wire(TEXT_EVENTS[0], TEXT_EVENTS[1], failure, DONE)], ledger)
    assert failure + b"\n\n" in out
    assert ledger.stream_error is not None
    assert ledger.stream_error.status == 502
    assert "generation failed" in ledger.stream_error.message


async def test_usage_written_with_spaces_is_still_found(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    spaced = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}'
    out = await relay([wire(TEXT_EVENTS[0], TEXT_EVENTS[1], spaced, DONE)], ledger)
    assert ledger.usage == Usage(7, 2)
    assert not any(b'"usage"' in event for event in out)
