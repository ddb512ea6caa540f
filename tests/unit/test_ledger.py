"""The per-request ledger: cost, estimates, metrics recorded once, and what a reload or a crash changes.

Pure logic: no network, no vLLM; the metrics are a real registry."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.accounting.ledger import CLIENT_LEFT, Accounting, dollars
from gateway.accounting.prices import PriceBook
from gateway.errors import ModelNotFound, UpstreamTimeout
from gateway.metrics import Metrics
from gateway.protocol.usage import Usage
from tests.unit.accounting_support import (
    BASE,
    CHAT_DATA,
    EMBEDDING_PER_1M,
    GPT,
    RAG,
    SEARCH_PER_QUERY,
    FakeTime,
    chat_chunk,
    costs,
    requests_total,
    route_labels,
    routed_ledger,
    sample,
    vllm_cost,
)


def test_settle_with_usage_adds_generation_embedding_and_search(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, RAG)
    ledger.retrieved(12)
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
    ledger.keep_event(chat_chunk({"role": "assistant", "content": ""}))
    ledger.keep_event(chat_chunk({"content": "Hello world!"}))
    cost = ledger.settle(None)
    # TokenCounter(None): one message of 8 characters (2) + framing 4 + 3; "Hello world!" 12 characters (3).
    assert ledger.usage == Usage(2 + 4 + 3, 3, estimated=True)
    assert cost == pytest.approx(vllm_cost(9, 3), rel=1e-12)


def test_settle_without_usage_estimates_a_whole_answer(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, endpoint="completions", data={"model": "tiny", "prompt": "abcdefgh"})
    ledger.keep_event(b'{"choices":[{"index":0,"text":"abcdefgh"}]}')
    ledger.settle(None)
    assert ledger.usage == Usage(2, 2, estimated=True)


def test_settle_without_usage_when_nothing_was_opened_costs_only_retrieval(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, RAG, opened=False)
    ledger.keep_event(chat_chunk({"content": "Hello world!"}))
    ledger.retrieved(0)
    assert ledger.settle(None) == pytest.approx(SEARCH_PER_QUERY)
    assert ledger.usage is None


def test_finish_records_once(accounting: Accounting, metrics: Metrics, clock: FakeTime) -> None:
    ledger = routed_ledger(accounting, RAG)
    ledger.retrieved(20)
    with ledger.waiting_upstream():
        clock.now += 0.5
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
    ledger.keep_event(chat_chunk({"content": "Hello world!"}))
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


def test_gateway_overhead_excludes_the_waits(accounting: Accounting, metrics: Metrics, clock: FakeTime) -> None:
    ledger = accounting.open("chat", clock.now)
    ledger.routed("tiny", CHAT_DATA, False)
    ledger.trying(BASE)
    clock.now += 0.05  # the gateway's own work: parsing, routing
    with ledger.waiting_elsewhere():
        clock.now += 0.3  # an adapter load
    with ledger.sending():
        clock.now += 0.6  # the upstream generating
    ledger.answer_opened()
    clock.now += 0.05  # the gateway's own work: accounting, writing
    assert ledger.overhead_s() == pytest.approx(0.1)
    ledger.finish(200)
    overhead = sample(metrics, "turnout_gateway_overhead_seconds_sum", route_kind="base", stream="false")
    duration = sample(metrics, "turnout_request_duration_seconds_sum", **route_labels("tiny", BASE), stream="false")
    upstream = sample(metrics, "turnout_upstream_duration_seconds_sum", backend="vllm", route_kind="base")
    assert duration == pytest.approx(1.0)
    assert overhead == pytest.approx(0.1)
    assert upstream == pytest.approx(0.6)


def test_fail_tells_what_was_spent_and_counts_the_error_once(accounting: Accounting, metrics: Metrics) -> None:
    ledger = routed_ledger(accounting, RAG, opened=False)
    ledger.retrieved(0)
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
    ledger.keep_event(chat_chunk({"content": "Hello world!"}))
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
    assert error.headers["x-turnout-cost-usd"] == "0"
    assert requests_total(metrics, "chat", "none", None, 404) == 1
    labels = route_labels("none", None)
    assert sample(metrics, "turnout_request_duration_seconds_count", **labels, stream="false") == 1
    exposition = metrics.exposition().decode()
    assert "who-knows" not in exposition
    assert 'route_kind="none"' in exposition


def test_ttft_is_observed_only_with_a_first_token(accounting: Accounting, metrics: Metrics, clock: FakeTime) -> None:
    labels = route_labels("tiny", BASE)
    silent = routed_ledger(accounting, BASE, stream=True)
    silent.finish(200)
    assert sample(metrics, "turnout_time_to_first_token_seconds_count", **labels) == 0
    speaking = accounting.open("chat", clock.now)
    speaking.routed("tiny", CHAT_DATA, True)
    speaking.trying(BASE)
    clock.now += 0.25
    speaking.saw_first_token()
    clock.now += 0.25
    speaking.saw_first_token()  # only the first counts
    speaking.finish(200)
    assert sample(metrics, "turnout_time_to_first_token_seconds_count", **labels) == 1
    assert sample(metrics, "turnout_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.25)


def test_a_ledger_keeps_the_prices_it_started_with(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, GPT)
    accounting.use_prices(PriceBook(costs(), []))  # a reload dropped the OpenAI model meanwhile
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
    ledger.added_to_prompt("x" * 400)  # retrieved context: 100 tokens at 4 characters a token
    ledger.settle(None)
    assert ledger.usage == Usage(2 + 100 + 4 + 3, 0, estimated=True)


def test_a_request_sent_but_never_answered_is_estimated(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, opened=False)
    with pytest.raises(asyncio.CancelledError), ledger.sending():
        raise asyncio.CancelledError  # the client left before the non-streaming answer's headers came
    assert ledger.sent
    ledger.finish(CLIENT_LEFT)
    assert ledger.usage == Usage(2 + 4 + 3, 0, estimated=True)
    assert ledger.cost == pytest.approx(vllm_cost(9, 0), rel=1e-12)


def test_a_request_refused_by_the_upstream_was_not_sent(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, opened=False)
    with pytest.raises(UpstreamTimeout), ledger.sending():
        raise UpstreamTimeout("refused before generating")
    assert not ledger.sent
    ledger.finish(504)
    assert ledger.usage is None  # nothing generated, nothing estimated
    assert ledger.cost == 0


def test_a_long_stream_keeps_a_bounded_start_and_scales_the_estimate(accounting: Accounting) -> None:
    ledger = routed_ledger(accounting, BASE, stream=True)
    event = chat_chunk({"content": "abcd" * 64})  # 64 tokens at 4 characters a token
    for _ in range(4000):
        ledger.keep_event(event)
    kept = len(ledger.events)
    assert kept * len(event) <= 256 * 1024 < 4000 * len(event)
    ledger.settle(None)
    assert ledger.usage is not None
    assert ledger.usage.completion == pytest.approx(4000 * 64, rel=0.01)


def test_what_a_routed_request_may_use_is_priced_at_its_dearest_target(accounting: Accounting) -> None:
    data = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50, "n": 2}
    ledger = routed_ledger(accounting, BASE, data=data, opened=False)
    prompt = 400 // 4 + 4 + 3  # four characters a token, and the chat framing
    tokens, cost = ledger.most_it_may_use([BASE, GPT], answer_tokens=1024)
    assert tokens == prompt + 100  # max_tokens for each of n answers
    gpt = (prompt * 0.15 + 100 * 0.6) * 1e-6
    assert cost == pytest.approx(max(gpt, vllm_cost(prompt, 100)), rel=1e-12)
    _, rag = ledger.most_it_may_use([RAG], answer_tokens=1024)
    assert rag == pytest.approx(vllm_cost(prompt, 100) + prompt * EMBEDDING_PER_1M * 1e-6 + SEARCH_PER_QUERY)
    unbounded = routed_ledger(accounting, BASE, data=CHAT_DATA, opened=False)
    assert unbounded.most_it_may_use([BASE], answer_tokens=1024)[0] == 8 // 4 + 7 + 1024  # no max_tokens
