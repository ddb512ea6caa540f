"""A stream's SSE events on their way to the client: usage held or passed, the closing event, first token.

Pure logic: no network, no vLLM; the metrics are a real registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.accounting.ledger import Accounting
from gateway.dispatch.answers import written_answer
from gateway.dispatch.events import accounted_events
from gateway.protocol.requests import Endpoint
from gateway.protocol.usage import Usage, generated_texts, usage_of_body
from tests.unit.accounting_support import (
    BASE,
    CHAT_DATA,
    DONE,
    ROLE_CHUNK,
    SEARCH_PER_QUERY,
    TEXT_EVENTS,
    USAGE_BODY,
    USAGE_EVENT,
    FakeTime,
    answer_events,
    continuous_usage_stream,
    last_chunk_with_usage,
    parsed,
    pieces,
    refusal_ledger,
    relay,
    routed_ledger,
    stream_ledger,
    upstream,
    vllm_cost,
    wire,
)


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


async def test_usage_on_a_chunk_with_choices_is_stripped_when_not_asked(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    last = last_chunk_with_usage()
    out = await relay([wire(*TEXT_EVENTS[:-1], last, DONE)], ledger)
    stripped = {k: v for k, v in parsed(last + b"\n\n").items() if k != "usage"}
    assert parsed(out[-3]) == stripped
    assert not any(b'"usage"' in event for event in out)
    assert ledger.usage == Usage(500, 50)
    assert parsed(out[-2])["turnout"] == {"cost_usd": ledger.cost, "estimated": False}


async def test_usage_on_a_chunk_with_choices_is_unchanged_when_asked(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=True)
    last = last_chunk_with_usage()
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


async def test_upstream_waits_accumulate(accounting: Accounting, clock: FakeTime) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    with ledger.sending():
        clock.now += 1.0  # the wait for the response headers, counted by the backend

    async def slow_upstream() -> AsyncIterator[bytes]:
        for chunk in (wire(ROLE_CHUNK), wire(TEXT_EVENTS[1]), wire(DONE)):
            clock.now += 0.5  # waiting for the upstream
            yield chunk
        clock.now += 0.25  # waiting for the connection to end

    out = [event async for event in accounted_events(slow_upstream(), ledger, None)]
    assert out[-1] == DONE + b"\n\n"
    assert ledger.upstream_s == pytest.approx(1.0 + 3 * 0.5 + 0.25)
    assert ledger.first_token_at == pytest.approx(102.0)  # the second chunk carried the first text


async def test_a_trailing_partial_event_is_passed_on(accounting: Accounting) -> None:
    ledger = stream_ledger(accounting, wants_usage=False)
    out = await relay([wire(ROLE_CHUNK), b'data: {"cho'], ledger)
    assert out == [ROLE_CHUNK + b"\n\n", b'data: {"cho']


async def test_continuous_usage_stats_charge_the_final_usage(accounting: Accounting) -> None:
    data = {**CHAT_DATA, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data)
    await relay([wire(*continuous_usage_stream())], ledger)
    assert ledger.usage == Usage(10, 3)


async def test_continuous_usage_stats_without_include_usage_leak_no_usage(accounting: Accounting) -> None:
    data = {**CHAT_DATA, "stream_options": {"continuous_usage_stats": True}}
    ledger = routed_ledger(accounting, BASE, stream=True, data=data)
    assert ledger.wants_usage is False
    out = await relay([wire(*continuous_usage_stream())], ledger)
    assert [event for event in out if b'"usage"' in event] == []


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_written_answer_without_usage_asked_has_no_usage(accounting: Accounting, endpoint: Endpoint) -> None:
    ledger = refusal_ledger(accounting, endpoint, wants_usage=False)
    out = await answer_events(endpoint, ledger)
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
    ledger = refusal_ledger(accounting, endpoint, wants_usage=True)
    out = await answer_events(endpoint, ledger)
    closing = parsed(out[-2])
    assert closing["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert closing["choices"] == []
    assert closing["turnout"] == {"cost_usd": pytest.approx(SEARCH_PER_QUERY), "estimated": False}
    assert sum(b'"usage"' in event for event in out) == 1


async def test_written_answer_whole_has_zero_usage() -> None:
    answer = written_answer("chat", "docs-bot", "No.", stream=False)
    assert usage_of_body(await answer.read()) == Usage(0, 0)


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
