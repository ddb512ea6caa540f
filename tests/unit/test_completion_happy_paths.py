"""Completions that succeed, in-process: the answer is the upstream's, streams pass through byte for byte,
every response says how it was routed and what it cost, and an adapter is loaded once then reused."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import TurnoutConfig
from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import (
    Gateway,
    chat_body,
    completion_body,
    event_data,
    events,
    gateway_config,
    serve_gateway,
)

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
ROUTES = [(BASE, f"base:{BASE}"), ("formal", "adapter:formal")]
FIXED_POINT = re.compile(r"^\d+\.\d+$")


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Gateway]:
    config = gateway_config(
        upstream.url,
        adapter_dir,
        ["formal", "once"],
        vllm={"max_resident": 8},
        costs={"vllm": {"gpu_hour_usd": 3.6, "prompt_tokens_per_second": 5000, "completion_tokens_per_second": 500}},
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def cost_of(config: TurnoutConfig, usage: dict[str, Any]) -> float:
    """What the README's formula charges for ``usage`` on a self-hosted route."""
    vllm = config.costs.vllm
    seconds = (
        int(usage["prompt_tokens"]) / vllm.prompt_tokens_per_second
        + int(usage["completion_tokens"]) / vllm.completion_tokens_per_second
    )
    return vllm.gpu_hour_usd * vllm.gpus_per_replica / 3600 * seconds


def assert_route_headers(headers: Any, route: str) -> None:
    assert headers["x-turnout-route"] == route
    assert headers["x-turnout-rule"] == "model-name"  # the client named a model directly
    assert "x-turnout-policy" not in headers
    assert "x-turnout-fallback-from" not in headers
    assert float(headers["x-turnout-overhead-ms"]) >= 0
    assert headers["x-request-id"]


@pytest.mark.parametrize(("model", "route"), ROUTES)
async def test_chat_answer_is_the_upstreams_with_route_and_cost_headers(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str
) -> None:
    raw = await gateway.openai.chat.completions.with_raw_response.create(model=model, messages=PROMPT, max_tokens=8)
    reply = raw.parse()
    [seen] = upstream.seen(model)
    assert seen.path == "/v1/chat/completions"
    answered = json.loads(seen.sent)
    assert reply.choices[0].message.content == answered["choices"][0]["message"]["content"]
    assert reply.usage is not None
    assert reply.usage.model_dump(exclude_none=True) == answered["usage"]
    assert_route_headers(raw.headers, route)
    cost = raw.headers["x-turnout-cost-usd"]
    assert FIXED_POINT.match(cost), cost  # fixed point, never 1.04e-05
    assert float(cost) == pytest.approx(cost_of(gateway.config, answered["usage"]), rel=1e-9)
    assert float(cost) > 0


@pytest.mark.parametrize(("model", "route"), ROUTES)
async def test_text_completion_answer_is_the_upstreams(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str
) -> None:
    raw = await gateway.openai.completions.with_raw_response.create(model=model, prompt="Once", max_tokens=8)
    reply = raw.parse()
    [seen] = upstream.seen(model)
    assert seen.path == "/v1/completions"
    answered = json.loads(seen.sent)
    assert reply.choices[0].text == answered["choices"][0]["text"]
    assert_route_headers(raw.headers, route)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(
        cost_of(gateway.config, answered["usage"]), rel=1e-9
    )


@pytest.mark.parametrize(("model", "route"), ROUTES)
@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_through_the_openai_client(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str, include_usage: bool
) -> None:
    raw = await gateway.openai.chat.completions.with_raw_response.create(
        model=model,
        messages=PROMPT,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    assert_route_headers(raw.headers, route)
    assert "x-turnout-cost-usd" not in raw.headers  # a stream's cost is not known when its headers leave
    chunks = [chunk async for chunk in raw.parse()]
    [seen] = upstream.seen(model)
    upstream_events = [event_data(e) for e in events(bytes(seen.sent))[:-1]]
    upstream_text = "".join(e["choices"][0]["delta"].get("content") or "" for e in upstream_events if e.get("choices"))
    upstream_usage = upstream_events[-1]["usage"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == upstream_text
    closing = chunks[-1]
    assert closing.choices == []
    assert closing.model_extra is not None
    turnout = closing.model_extra["turnout"]
    assert turnout == {"cost_usd": pytest.approx(cost_of(gateway.config, upstream_usage), rel=1e-9), "estimated": False}
    if include_usage:
        assert closing.usage is not None
        assert closing.usage.model_dump(exclude_none=True) == upstream_usage
    else:
        assert closing.usage is None
    assert all(c.usage is None for c in chunks[:-1])
    assert all("turnout" not in (c.model_extra or {}) for c in chunks[:-1])


@pytest.mark.parametrize(("model", "route"), ROUTES)
async def test_text_completion_stream_through_the_openai_client(
    gateway: Gateway, upstream: FaultyUpstream, model: str, route: str
) -> None:
    raw = await gateway.openai.completions.with_raw_response.create(
        model=model, prompt="Once", max_tokens=8, stream=True
    )
    assert_route_headers(raw.headers, route)
    chunks = [chunk async for chunk in raw.parse()]
    [seen] = upstream.seen(model)
    upstream_events = [event_data(e) for e in events(bytes(seen.sent))[:-1]]
    upstream_text = "".join(e["choices"][0]["text"] for e in upstream_events if e.get("choices"))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == upstream_text
    assert chunks[-1].choices == []
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["turnout"]["cost_usd"] > 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body("formal", stream=True)),
        ("/v1/chat/completions", chat_body(BASE, stream=True, stream_options={"include_usage": False})),
        ("/v1/completions", completion_body(BASE, stream=True)),
    ],
)
async def test_stream_bytes_pass_through_and_usage_is_hidden_when_not_asked(
    gateway: Gateway, upstream: FaultyUpstream, path: str, body: dict[str, Any]
) -> None:
    """Every event reaches the client as the upstream wrote it, except the usage event the gateway asked
    for on its own account: in its place comes the gateway's closing event, with the cost and no usage."""
    response = await gateway.http.post(path, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    [seen] = upstream.seen(body["model"])
    assert seen.data["stream_options"]["include_usage"] is True  # asked upstream all the same
    ours, theirs = events(response.content), events(bytes(seen.sent))
    assert len(ours) == len(theirs)
    assert ours[:-2] == theirs[:-2]
    assert ours[-1] == theirs[-1] == b"data: [DONE]"
    upstream_usage = event_data(theirs[-2])
    assert upstream_usage["choices"] == []
    closing = event_data(ours[-2])
    assert closing["choices"] == []
    assert "usage" not in closing
    assert closing["id"] == upstream_usage["id"]  # it reads as a chunk of the same answer
    assert closing["turnout"]["cost_usd"] == pytest.approx(cost_of(gateway.config, upstream_usage["usage"]), rel=1e-9)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_with_usage_asked_relays_the_upstream_usage_event_with_the_cost(
    gateway: Gateway, upstream: FaultyUpstream, path: str
) -> None:
    make = chat_body if path == "/v1/chat/completions" else completion_body
    body = make("formal", stream=True, stream_options={"include_usage": True})
    response = await gateway.http.post(path, content=json.dumps(body))
    [seen] = upstream.seen("formal")
    assert seen.body == json.dumps(body).encode()  # nothing to reshape: the client's own bytes went upstream
    ours, theirs = events(response.content), events(bytes(seen.sent))
    assert ours[:-2] == theirs[:-2]
    assert ours[-1] == theirs[-1] == b"data: [DONE]"
    usage_event = event_data(ours[-2])
    turnout = usage_event.pop("turnout")
    assert usage_event == event_data(theirs[-2])  # the upstream's usage event, unchanged
    assert turnout["estimated"] is False
    assert turnout["cost_usd"] == pytest.approx(cost_of(gateway.config, usage_event["usage"]), rel=1e-9)


async def test_fields_the_gateway_does_not_need_are_forwarded_untouched(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    body = json.dumps(
        {
            **chat_body("formal"),
            "top_k": 7,
            "ignore_eos": True,
            "guided_json": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "metadata": {"team": "search"},
            "user": "u-1",
        },
        indent=1,
    ).encode()
    response = await gateway.http.post("/v1/chat/completions", content=body)
    assert response.status_code == 200
    [seen] = upstream.seen("formal")
    assert seen.body == body


async def test_client_request_id_is_kept_and_reaches_the_upstream_with_a_suffix(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    trace = "trace-42.a:b/c=d"
    first = await gateway.http.post("/v1/chat/completions", json=chat_body(BASE), headers={"x-request-id": trace})
    second = await gateway.http.post("/v1/completions", json=completion_body(BASE), headers={"x-request-id": trace})
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == trace
    sent = [seen.request_id for seen in upstream.seen(BASE)]
    assert len(sent) == 2
    for request_id in sent:
        assert request_id is not None
        assert request_id.startswith(trace + "-")
        assert len(request_id) > len(trace) + 1
    assert sent[0] != sent[1]  # a client reusing its id never makes two upstream requests share one


@pytest.mark.parametrize("hostile", ["has spaces", "x" * 129, "semi;colon", ""])
async def test_unusable_request_id_is_replaced_by_a_generated_one_everywhere(
    gateway: Gateway, upstream: FaultyUpstream, hostile: str
) -> None:
    response = await gateway.http.post("/v1/chat/completions", json=chat_body(BASE), headers={"x-request-id": hostile})
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert generated != hostile
    assert re.fullmatch(r"[0-9a-f]{20,}", generated)
    [seen] = upstream.seen(BASE)
    assert seen.request_id is not None
    assert seen.request_id.startswith(generated + "-")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions/", chat_body("formal")), ("/v1/completions/", completion_body("formal", stream=True))],
)
async def test_completion_paths_with_a_trailing_slash_are_served(
    gateway: Gateway, upstream: FaultyUpstream, path: str, body: dict[str, Any]
) -> None:
    response = await gateway.http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-route"] == "adapter:formal"
    [seen] = upstream.seen("formal")
    assert seen.path == path.rstrip("/")


async def test_adapter_is_loaded_once_by_concurrent_first_requests_then_reused(
    gateway: Gateway, upstream: FaultyUpstream, adapter_dir: Path
) -> None:
    listed = {m["id"]: m["turnout"] for m in (await gateway.http.get("/v1/models")).json()["data"]}
    assert listed["once"]["resident"] is False

    async def ask() -> int:
        response = await gateway.http.post("/v1/chat/completions", json=chat_body("once"))
        return response.status_code

    assert await asyncio.gather(*(ask() for _ in range(5))) == [200] * 5
    assert upstream.loads == ["once"]
    assert upstream.load_paths["once"] == str(adapter_dir)
    assert await ask() == 200
    assert upstream.loads == ["once"], "a resident adapter must not be loaded again"
    assert len(upstream.seen("once")) == 6
    listed = {m["id"]: m["turnout"] for m in (await gateway.http.get("/v1/models")).json()["data"]}
    assert listed["once"]["resident"] is True
    scrape = await gateway.scrape()
    assert scrape.value("turnout_adapter_loads_total", adapter="once", outcome="success") == 1
    assert scrape.value("turnout_adapter_resident", adapter="once") == 1
