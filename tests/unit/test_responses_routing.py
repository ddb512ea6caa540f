"""``POST /v1/responses`` routed like chat, in-process: policies' rules and fallback chains, the OpenAI
route through litellm (against an OpenAI-compatible server with a Responses API), and targets that cannot
serve the endpoint named in a 400 that a fallback may take."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.faulty_upstream import BASE, CHUNKS, FaultyUpstream, fail
from tests.support.inprocess import (
    CHAT,
    RESPONSES,
    Gateway,
    Scrape,
    assert_envelope,
    chat_body,
    events,
    gateway_config,
    named_event,
    responses_body,
    serve_gateway,
    serve_upstream,
)

FINE_TUNE = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
PRICE = {"input": 0.3, "output": 1.2, "cached_input": 0.15}  # dollars per million tokens
POLICIES: dict[str, Any] = {
    "desk": {
        "rules": [
            {
                "name": "vip",
                "when": {"header": {"name": "x-tier", "equals": "vip"}},
                "target": f"adapter:{fail(500)}",
                "fallbacks": ["adapter:formal"],
            },
            {"name": "memo", "when": {"keywords": ["memo"]}, "target": "adapter:formal"},
        ],
        "default": "base",
        "fallbacks": [f"adapter:{fail(503)}"],
    },
    "rescue": {"default": f"adapter:{fail(500)}", "fallbacks": [f"adapter:{fail(503)}", "base"]},
    "exhausted": {"default": f"adapter:{fail(500)}", "fallbacks": [f"adapter:{fail(503)}"]},
    "rejected": {"default": f"adapter:{fail(400)}", "fallbacks": ["base"]},
    "not-implemented": {"default": f"adapter:{fail(501)}", "fallbacks": ["base"]},
    "hosted": {"default": f"openai:{FINE_TUNE}"},
}
OLD_POLICIES: dict[str, Any] = {
    "stuck": {"default": "base"},
    "rescued": {"default": "base", "fallbacks": [f"openai:{FINE_TUNE}"]},
}


@dataclass
class Stack:
    gateway: Gateway  # in front of the upstream, with the OpenAI route on ``hosted``
    old: Gateway  # in front of a server without the Responses API
    hosted: FaultyUpstream  # an OpenAI-compatible server that serves the fine-tune's name


@pytest.fixture(scope="module")
async def stack(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Stack]:
    names = ["formal", fail(500), fail(503), fail(400), fail(501)]
    async with (
        serve_upstream(FaultyUpstream(served=(FINE_TUNE,))) as hosted,
        serve_upstream(FaultyUpstream(responses=False)) as without,
    ):
        sections: dict[str, Any] = {
            "openai": {"api_base": hosted.url + "/v1", "api_key": "sk-loopback"},
            "costs": {"openai": {"models": {FINE_TUNE: PRICE}}},
        }
        main = gateway_config(
            upstream.url, adapter_dir, names, vllm={"max_resident": 16}, policies=POLICIES, **sections
        )
        old = gateway_config(without.url, adapter_dir, ["formal"], policies=OLD_POLICIES, **sections)
        async with serve_gateway(main) as gateway, serve_gateway(old) as old_gateway:
            yield Stack(gateway, old_gateway, hosted)


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def asked(upstream: FaultyUpstream) -> list[str]:
    return [seen.model for seen in upstream.requests]


def gained(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_rules_decide_on_the_input_and_headers(stack: Stack, upstream: FaultyUpstream) -> None:
    gateway = stack.gateway
    before = await gateway.scrape()
    vip = await gateway.http.post(RESPONSES, json=responses_body("desk"), headers={"x-tier": "vip"})
    assert vip.status_code == 200, vip.text
    assert (vip.headers["x-turnout-rule"], vip.headers["x-turnout-route"]) == ("vip", "adapter:formal")
    assert vip.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)}"
    assert vip.headers["x-turnout-policy"] == "desk"

    conversation = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": [{"type": "input_text", "text": "Draft a MEMO please"}]},
    ]
    memo = await gateway.http.post(RESPONSES, json={"model": "desk", "input": conversation})
    assert (memo.headers["x-turnout-rule"], memo.headers["x-turnout-route"]) == ("memo", "adapter:formal")
    plain = await gateway.http.post(RESPONSES, json=responses_body("desk"))
    assert (plain.headers["x-turnout-rule"], plain.headers["x-turnout-route"]) == ("default", f"base:{BASE}")
    assert asked(upstream) == [fail(500), "formal", "formal", BASE]
    assert [seen.path for seen in upstream.requests] == [RESPONSES] * 4

    after = await gateway.grown(before, "turnout_requests_total", 3, endpoint="responses", policy="desk")
    assert gained(before, after, "turnout_routing_decisions_total", policy="desk", rule="vip") == 1
    assert gained(before, after, "turnout_routing_decisions_total", policy="desk", rule="memo") == 1
    assert gained(before, after, "turnout_requests_total", endpoint="chat") == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_failing_targets_give_way_before_the_first_byte(
    stack: Stack, upstream: FaultyUpstream, stream: bool
) -> None:
    gateway = stack.gateway
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, json=responses_body("rescue", stream=stream))
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    assert response.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)},adapter:{fail(503)}"
    assert asked(upstream) == [fail(500), fail(503), BASE]
    if stream:
        received = events(response.content)
        assert named_event(received[-1])[0] == "response.completed"
        assert all(b"event: error" not in event for event in received)  # the failures never reach the stream
    after = await gateway.grown(
        before, "turnout_requests_total", 1, endpoint="responses", policy="rescue", target=f"base:{BASE}", status="200"
    )
    for failed, reason in ((fail(500), "upstream_error"), (fail(503), "upstream_unavailable")):
        labels = {"policy": "rescue", "from_target": f"adapter:{failed}", "reason": reason}
        assert gained(before, after, "turnout_fallbacks_total", **labels) == 1


async def test_an_exhausted_chain_answers_with_the_last_targets_error(stack: Stack, upstream: FaultyUpstream) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await stack.gateway.openai.responses.create(model="exhausted", input="hi")
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_unavailable"
    assert caught.value.response.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)}"
    assert asked(upstream) == [fail(500), fail(503)]


async def test_an_upstream_client_error_is_relayed_and_never_tried_elsewhere(
    stack: Stack, upstream: FaultyUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.gateway.openai.responses.create(model="rejected", input="hi")
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["code"], caught.value.body["param"]) == ("upstream_rejected", "max_tokens")
    assert asked(upstream) == [fail(400)]


async def test_a_target_answering_501_is_named_and_the_fallback_takes_it(
    stack: Stack, upstream: FaultyUpstream
) -> None:
    before = await stack.gateway.scrape()
    response = await stack.gateway.http.post(RESPONSES, json=responses_body("not-implemented"))
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    after = await stack.gateway.grown(before, "turnout_requests_total", 1, policy="not-implemented", status="200")
    labels = {"from_target": f"adapter:{fail(501)}", "reason": "unsupported_endpoint"}
    assert gained(before, after, "turnout_fallbacks_total", policy="not-implemented", **labels) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_server_without_the_responses_api_is_a_400_naming_target_and_endpoint(
    stack: Stack, stream: bool
) -> None:
    before = await stack.old.scrape()
    response = await stack.old.http.post(RESPONSES, json=responses_body("stuck", stream=stream))
    error = assert_envelope(response, 400, "unsupported_endpoint")
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"base:{BASE} cannot serve POST /v1/responses: ")
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    after = await stack.old.grown(before, "turnout_requests_total", 1, endpoint="responses", policy="stuck")
    assert gained(before, after, "turnout_requests_total", policy="stuck", status="400") == 1
    assert gained(before, after, "turnout_errors_total", type="unsupported_endpoint") == 1
    # the same server still serves chat
    chat = await stack.old.http.post(CHAT, json=chat_body(BASE))
    assert chat.status_code == 200, chat.text


async def test_an_adapter_on_a_server_without_the_responses_api_is_not_reloaded(stack: Stack) -> None:
    """Its 404 says the path is missing, not the adapter: no healing, no reload, no resend."""
    before = await stack.old.scrape()
    response = await stack.old.http.post(RESPONSES, json=responses_body("formal"))
    assert_envelope(response, 400, "unsupported_endpoint")
    after = await stack.old.scrape()
    assert gained(before, after, "turnout_adapter_loads_total", adapter="formal") <= 1  # its first load, if any


async def test_a_fallback_to_the_openai_route_takes_what_the_server_cannot_serve(stack: Stack) -> None:
    stack.hosted.clear()
    raw = await stack.old.openai.responses.with_raw_response.create(model="rescued", input="hi", max_output_tokens=16)
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    assert raw.headers["x-turnout-fallback-from"] == f"base:{BASE}"
    assert raw.parse().output_text
    assert [seen.path for seen in stack.hosted.requests] == [RESPONSES]


def openai_cost(usage: Any) -> float:
    cached = usage.input_tokens_details.cached_tokens
    fresh = usage.input_tokens - cached
    return float(fresh * PRICE["input"] + cached * PRICE["cached_input"] + usage.output_tokens * PRICE["output"]) / 1e6


async def test_the_openai_route_answers_through_litellms_responses_support(stack: Stack) -> None:
    hosted = stack.hosted
    hosted.clear()
    raw = await stack.gateway.openai.responses.with_raw_response.create(
        model="hosted", input=[{"role": "user", "content": "hi"}], instructions="Be brief.", max_output_tokens=8
    )
    reply = raw.parse()
    assert raw.headers["x-turnout-route"] == f"openai:{FINE_TUNE}"
    [seen] = hosted.seen(FINE_TUNE)
    assert seen.path == RESPONSES
    assert seen.data["instructions"] == "Be brief."
    assert seen.data["max_output_tokens"] == 16  # litellm raises it to OpenAI's minimum
    answered = json.loads(seen.sent)
    assert reply.output_text == answered["output"][0]["content"][0]["text"]
    assert reply.usage is not None
    assert reply.usage.input_tokens_details.cached_tokens == 4
    assert "cost" not in (reply.usage.model_extra or {})  # litellm's own figure is not passed on
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(openai_cost(reply.usage), rel=1e-9)


async def test_the_openai_route_streams_named_events_that_end_with_the_cost(stack: Stack) -> None:
    before = await stack.gateway.scrape()
    async with stack.gateway.openai.responses.stream(model="hosted", input="hi", max_output_tokens=16) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == CHUNKS
    assert final.usage is not None
    assert "cost" not in (final.usage.model_extra or {})
    turnout = (final.model_extra or {})["turnout"]
    assert turnout == {"cost_usd": pytest.approx(openai_cost(final.usage), rel=1e-9), "estimated": False}
    after = await stack.gateway.grown(before, "turnout_requests_total", 1, endpoint="responses", policy="hosted")
    assert gained(before, after, "turnout_cost_dollars_total", policy="hosted") == pytest.approx(turnout["cost_usd"])
    assert gained(before, after, "turnout_tokens_total", policy="hosted", direction="completion") == CHUNKS
