"""``POST /v1/responses`` answered, in-process: the answer is the upstream's, streams pass through event by
event and end with the costed ``response.completed``, the official client's helpers read them, every
response says how it was routed and what it cost, and a target's prompt and caps reach the upstream."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import TurnoutConfig
from tests.support.faulty_upstream import BASE, CHUNKS, NO_USAGE, FaultyUpstream
from tests.support.inprocess import (
    RESPONSES,
    Gateway,
    events,
    gateway_config,
    named_event,
    responses_body,
    serve_gateway,
)

ROUTES = [(BASE, f"base:{BASE}"), ("formal", "adapter:formal")]
FIXED_POINT = re.compile(r"^\d+\.\d+$")
PRICED = {"vllm": {"gpu_hour_usd": 3.6, "prompt_tokens_per_second": 5000, "completion_tokens_per_second": 500}}
POLICIES: dict[str, Any] = {
    "shaped": {
        "default": {"adapter": "formal", "system_prompt": "Answer formally.", "caps": {"max_tokens": 5}},
    }
}


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Gateway]:
    config = gateway_config(
        upstream.url, adapter_dir, ["formal", NO_USAGE], vllm={"max_resident": 8}, costs=PRICED, policies=POLICIES
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def cost_of(config: TurnoutConfig, prompt: int, completion: int) -> float:
    """What the README's formula charges on a self-hosted route."""
    vllm = config.costs.vllm
    seconds = prompt / vllm.prompt_tokens_per_second + completion / vllm.completion_tokens_per_second
    return vllm.gpu_hour_usd * vllm.gpus_per_replica / 3600 * seconds


def assert_route_headers(headers: Any, route: str) -> None:
    assert headers["x-turnout-route"] == route
    assert headers["x-turnout-rule"] == "model-name"
    assert "x-turnout-policy" not in headers
    assert "x-turnout-fallback-from" not in headers
    assert float(headers["x-turnout-overhead-ms"]) >= 0
    assert headers["x-request-id"]


@pytest.mark.parametrize(("model", "route"), ROUTES)
async def test_an_answer_is_the_upstreams_with_route_and_cost_headers(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str
) -> None:
    raw = await gateway.openai.responses.with_raw_response.create(
        model=model, input=[{"role": "user", "content": "Say something."}], max_output_tokens=8
    )
    reply = raw.parse()
    [seen] = upstream.seen(model)
    assert seen.path == "/v1/responses"
    answered = json.loads(seen.sent)
    assert reply.output_text == answered["output"][0]["content"][0]["text"]
    assert reply.id == answered["id"]
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, CHUNKS)
    assert reply.usage.input_tokens_details.cached_tokens == 4
    assert_route_headers(raw.headers, route)
    cost = raw.headers["x-turnout-cost-usd"]
    assert FIXED_POINT.match(cost), cost
    assert float(cost) == pytest.approx(cost_of(gateway.config, 12, CHUNKS), rel=1e-9)
    assert float(cost) > 0
    assert "x-turnout-usage-estimated" not in raw.headers


@pytest.mark.parametrize(("model", "route"), ROUTES)
async def test_a_stream_reaches_the_openai_client_with_the_cost_on_response_completed(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str
) -> None:
    raw = await gateway.openai.responses.with_raw_response.create(
        model=model, input="Say something.", max_output_tokens=8, stream=True
    )
    assert_route_headers(raw.headers, route)
    assert "x-turnout-cost-usd" not in raw.headers  # a stream's cost is not known when its headers leave
    received = [event async for event in raw.parse()]
    [seen] = upstream.seen(model)
    upstream_events = [named_event(e) for e in events(bytes(seen.sent))]
    assert [e.type for e in received] == [kind for kind, _ in upstream_events]
    assert [e.sequence_number for e in received] == list(range(len(upstream_events)))
    text = "".join(e.delta for e in received if e.type == "response.output_text.delta")
    assert text == upstream_events[-1][1]["response"]["output"][0]["content"][0]["text"]
    completed = received[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == CHUNKS
    extra = completed.response.model_extra or {}
    assert extra["turnout"] == {"cost_usd": pytest.approx(cost_of(gateway.config, 12, CHUNKS)), "estimated": False}
    for event in received[:-1]:
        response = getattr(event, "response", None)
        assert response is None or "turnout" not in (response.model_extra or {})


async def test_the_stream_helper_gives_the_final_response_with_its_cost(gateway: Gateway) -> None:
    async with gateway.openai.responses.stream(model="formal", input="Say something.", max_output_tokens=8) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.status == "completed"
    assert (final.model_extra or {})["turnout"]["cost_usd"] == pytest.approx(cost_of(gateway.config, 12, CHUNKS))


async def test_stream_events_pass_through_byte_for_byte_but_the_last(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    body = json.dumps(responses_body("formal", stream=True)).encode()
    response = await gateway.http.post(RESPONSES, content=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    [seen] = upstream.seen("formal")
    assert seen.body == body  # nothing to reshape: the client's own bytes went upstream, nothing asked for usage
    ours, theirs = events(response.content), events(bytes(seen.sent))
    assert ours[:-1] == theirs[:-1]
    assert b"[DONE]" not in response.content
    kind, closing = named_event(ours[-1])
    upstream_kind, upstream_closing = named_event(theirs[-1])
    assert kind == upstream_kind == "response.completed"
    turnout = closing["response"].pop("turnout")
    assert closing == upstream_closing  # the upstream's own event, with Turnout's field added
    assert turnout == {"cost_usd": pytest.approx(cost_of(gateway.config, 12, CHUNKS), rel=1e-9), "estimated": False}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_targets_system_prompt_goes_before_instructions_and_its_cap_bounds_max_output_tokens(
    gateway: Gateway, upstream: FaultyUpstream, stream: bool
) -> None:
    response = await gateway.http.post(
        RESPONSES,
        json=responses_body("shaped", instructions="Be brief.", max_output_tokens=50, stream=stream, top_k=3),
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-route"] == "adapter:formal"
    assert response.headers["x-turnout-policy"] == "shaped"
    [seen] = upstream.seen("formal")
    assert seen.data["instructions"] == "Answer formally.\n\nBe brief."
    assert seen.data["max_output_tokens"] == 5
    assert seen.data["top_k"] == 3  # fields the gateway does not need are forwarded
    assert "stream_options" not in seen.data  # a Responses stream always ends with its usage

    upstream.clear()
    await gateway.http.post(RESPONSES, json={"model": "shaped", "input": "hi"})
    [seen] = upstream.seen("formal")
    assert (seen.data["instructions"], seen.data["max_output_tokens"]) == ("Answer formally.", 5)


async def test_without_upstream_usage_the_answer_is_counted_here_and_says_so(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, json=responses_body(NO_USAGE))
    assert response.status_code == 200
    assert response.json()["usage"] is None  # the upstream's answer, as it came
    assert response.headers["x-turnout-usage-estimated"] == "true"
    assert float(response.headers["x-turnout-cost-usd"]) > 0
    after = await gateway.grown(before, "turnout_usage_estimated_total", 1, route_kind="adapter")
    completion = after.value("turnout_tokens_total", policy=NO_USAGE, direction="completion") - before.value(
        "turnout_tokens_total", policy=NO_USAGE, direction="completion"
    )
    assert completion > 0  # the generated text, counted with the base model's tokenizer (or 4 characters a token)


async def test_without_upstream_usage_a_stream_ends_with_the_estimate_in_its_usage(gateway: Gateway) -> None:
    stream = await gateway.openai.responses.create(model=NO_USAGE, input="Say something.", stream=True)
    received = [event async for event in stream]
    completed = received[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    assert usage.output_tokens > 0
    assert usage.input_tokens > 0
    turnout = (completed.response.model_extra or {})["turnout"]
    assert turnout["estimated"] is True
    assert turnout["cost_usd"] == pytest.approx(cost_of(gateway.config, usage.input_tokens, usage.output_tokens))


async def test_request_ids_and_the_trailing_slash(gateway: Gateway, upstream: FaultyUpstream) -> None:
    response = await gateway.http.post(
        RESPONSES + "/", json=responses_body(BASE), headers={"x-request-id": "trace-resp.1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-resp.1"
    [seen] = upstream.seen(BASE)
    assert seen.path == RESPONSES
    assert seen.request_id is not None
    assert seen.request_id.startswith("trace-resp.1-")


async def test_explain_takes_a_responses_body(gateway: Gateway) -> None:
    explained = await gateway.http.post(
        "/v1/route/explain", json={"model": "shaped", "input": [{"role": "user", "content": "hello"}]}
    )
    assert explained.status_code == 200, explained.text
    assert explained.json()["decision"]["target"]["label"] == "adapter:formal"
    refused = await gateway.http.post("/v1/route/explain", json={"model": "shaped", "input": [{"role": "wizard"}]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input.0.role"


async def test_metrics_add_up_to_what_the_clients_were_told(gateway: Gateway) -> None:
    before = await gateway.scrape()
    raw = await gateway.openai.responses.with_raw_response.create(model="formal", input="hi", max_output_tokens=8)
    told = float(raw.headers["x-turnout-cost-usd"])
    stream = await gateway.openai.responses.create(model="formal", input="hi", max_output_tokens=8, stream=True)
    completed = [event async for event in stream][-1]
    assert completed.type == "response.completed"
    told += (completed.response.model_extra or {})["turnout"]["cost_usd"]
    labels = {"endpoint": "responses", "policy": "formal", "target": "adapter:formal", "status": "200"}
    after = await gateway.grown(before, "turnout_requests_total", 2, **labels)

    def gained(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert gained("turnout_cost_dollars_total", policy="formal") == pytest.approx(told, rel=1e-9)
    assert gained("turnout_tokens_total", policy="formal", direction="prompt") == 2 * 12
    assert gained("turnout_tokens_total", policy="formal", direction="completion") == 2 * CHUNKS
    assert gained("turnout_time_to_first_token_seconds_count", policy="formal") == 1  # the stream's
    assert gained("turnout_request_duration_seconds_count", policy="formal", stream="true") == 1
    assert gained("turnout_usage_estimated_total") == 0
    assert gained("turnout_in_flight_requests") == 0
