"""``/metrics`` agrees with what the clients were told, in-process: after a mix of answers, refusals and
failures, requests by route and status, errors by code, dollars and tokens add up to what the responses
said, request by request."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.faulty_upstream import BASE, FaultyUpstream, fail
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    Scrape,
    assert_envelope,
    event_data,
    events,
    gateway_config,
    raw_exchange,
    serve_gateway,
    write_adapter,
)

PROMPT = [{"role": "user", "content": "Count to four."}]


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    config = gateway_config(
        upstream.url,
        write_adapter(tmp_path_factory.mktemp("adapters") / "lora"),
        ["formal", fail(400), fail(500)],
        policies={"desk": {"default": f"adapter:{fail(500)}", "fallbacks": ["adapter:formal"]}},
        costs={"vllm": {"gpu_hour_usd": 2.5, "gpus_per_replica": 2, "completion_tokens_per_second": 300}},
    )
    async with serve_gateway(config) as served:
        yield served


@dataclass
class Told:
    """What one client was told: the labels its request must be counted under, its cost and usage."""

    endpoint: str
    policy: str
    target: str
    status: int
    error: str | None
    cost: float
    usage: dict[str, int] | None


async def call(gateway: Gateway, method: str, path: str, body: Any) -> Told:
    """Make one request and read off it everything the metrics should agree with."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await gateway.http.request(method, path, content=content)
    return told(response, path, body)


def told(response: httpx.Response, path: str, body: Any) -> Told:
    endpoint = "chat" if path.rstrip("/") == CHAT else "completions"
    headers = response.headers
    route = headers.get("x-turnout-route")
    # a request is counted under the policy it named, or the model it named; refused before routing: none
    policy = headers.get("x-turnout-policy") or (body["model"] if route else "none")
    error: str | None = None
    usage: dict[str, int] | None = None
    if response.headers["content-type"].startswith("text/event-stream"):
        closing = event_data(events(response.content)[-2])
        cost = closing["turnout"]["cost_usd"]
        usage = closing.get("usage")
    else:
        payload = response.json()
        cost = float(headers.get("x-turnout-cost-usd", "0"))
        if "error" in payload:
            error = payload["error"]["code"] or payload["error"]["type"]
        else:
            usage = payload["usage"]
    return Told(endpoint, policy, route or "none", response.status_code, error, cost, usage)


def gained(before: Scrape, after: Scrape, name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """How much each series of ``name`` grew, keyed by the values of ``keys``."""
    grown: dict[tuple[str, ...], float] = {}
    for labels, value in after.series(name).items():
        named = dict(labels)
        previous = before.value(name, **named)
        if value != previous:
            key = tuple(named[k] for k in keys)
            grown[key] = grown.get(key, 0) + value - previous
    return grown


@pytest.fixture(scope="module")
async def traffic(gateway: Gateway, upstream: FaultyUpstream) -> tuple[Scrape, list[Told], Scrape]:
    """A mix of requests, made once for the module: what the metrics were before, what each client was
    told, and what the metrics were after."""
    before = await gateway.scrape()
    calls: list[tuple[str, str, Any]] = [
        ("POST", CHAT, {"model": BASE, "messages": PROMPT}),
        ("POST", CHAT, {"model": BASE, "messages": PROMPT, "max_tokens": 3}),
        ("POST", TEXT, {"model": "formal", "prompt": "Once"}),
        ("POST", CHAT, {"model": "formal", "messages": PROMPT, "stream": True}),
        ("POST", TEXT, {"model": BASE, "prompt": "Once", "stream": True, "stream_options": {"include_usage": True}}),
        ("POST", CHAT + "/", {"model": "desk", "messages": PROMPT}),
        ("POST", TEXT, {"model": "desk", "prompt": "Once", "stream": True}),
        ("POST", CHAT, {"model": fail(400), "messages": PROMPT}),
        ("POST", TEXT, {"model": fail(500), "prompt": "Once", "stream": True}),
        ("POST", CHAT, {"model": "nobody", "messages": PROMPT}),
        ("POST", TEXT, b"{broken"),
        ("GET", CHAT, b""),
    ]
    said = [await call(gateway, method, path, body) for method, path, body in calls]
    scrape = await gateway.grown(before, "turnout_requests_total", len(calls))
    return before, said, scrape


async def test_requests_are_counted_under_the_route_and_status_each_client_saw(
    traffic: tuple[Scrape, list[Told], Scrape],
) -> None:
    before, said, after = traffic
    expected = Counter((t.endpoint, t.policy, t.target, str(t.status)) for t in said)
    assert gained(before, after, "turnout_requests_total", ("endpoint", "policy", "target", "status")) == dict(expected)
    assert {t.status for t in said} == {200, 400, 404, 405, 502}  # the mix did what it was meant to


async def test_errors_are_counted_by_the_code_each_client_saw(traffic: tuple[Scrape, list[Told], Scrape]) -> None:
    before, said, after = traffic
    expected = Counter((t.error,) for t in said if t.error is not None)
    assert gained(before, after, "turnout_errors_total", ("type",)) == dict(expected)


async def test_dollars_add_up_to_the_costs_the_clients_were_told(
    gateway: Gateway, traffic: tuple[Scrape, list[Told], Scrape]
) -> None:
    before, said, after = traffic
    by_target: dict[str, float] = {}
    for t in said:
        by_target[t.target] = by_target.get(t.target, 0.0) + t.cost
    assert sum(by_target.values()) > 0
    for target, dollars in by_target.items():
        counted = after.value("turnout_cost_dollars_total", target=target) - before.value(
            "turnout_cost_dollars_total", target=target
        )
        assert counted == pytest.approx(dollars, rel=1e-9, abs=1e-15), target
    counted = after.value("turnout_cost_dollars_total", component="generation") - before.value(
        "turnout_cost_dollars_total", component="generation"
    )
    assert counted == pytest.approx(sum(by_target.values()), rel=1e-9)


async def test_tokens_add_up_to_the_usage_the_upstream_reported(
    upstream: FaultyUpstream, traffic: tuple[Scrape, list[Told], Scrape]
) -> None:
    before, said, after = traffic
    reported: Counter[str] = Counter()
    for seen in upstream.requests:
        answered = events(bytes(seen.sent))
        if seen.stream and len(answered) > 1:
            usage = event_data(answered[-2]).get("usage")
        else:
            usage = json.loads(seen.sent).get("usage")
        if usage:
            reported["prompt"] += usage["prompt_tokens"]
            reported["completion"] += usage["completion_tokens"]
    assert reported["completion"] > 0
    for direction, tokens in reported.items():
        counted = after.value("turnout_tokens_total", direction=direction) - before.value(
            "turnout_tokens_total", direction=direction
        )
        assert counted == tokens, direction
    told_completion = sum(t.usage["completion_tokens"] for t in said if t.usage is not None)
    assert 0 < told_completion <= reported["completion"]  # clients that asked saw the figures counted


async def test_no_request_stays_in_flight(gateway: Gateway, traffic: tuple[Scrape, list[Told], Scrape]) -> None:
    _, said, after = traffic
    assert said
    assert after.value("turnout_in_flight_requests") == 0
    assert (await gateway.scrape()).value("turnout_in_flight_requests") == 0


async def test_what_the_web_framework_refuses_gets_the_envelope_but_is_not_counted(gateway: Gateway) -> None:
    """Unknown URLs and methods on the other endpoints (scanners send plenty) are answered with the
    envelope, and kept out of the error metrics, which count the gateway's own refusals."""
    before = await gateway.scrape()
    assert_envelope(await gateway.http.get("/wp-login.php"), 404, "not_found")
    assert_envelope(await gateway.http.delete("/v1/models"), 405, "method_not_allowed")
    assert_envelope(await gateway.http.post(CHAT + "//", json={}), 404, "not_found")
    odd = await raw_exchange(gateway.port, b"OPTIONS * HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert odd.status == 404
    assert odd.json()["error"]["code"] == "not_found"
    assert odd.headers.get("x-request-id")
    after = await gateway.scrape()
    assert after.value("turnout_errors_total") == before.value("turnout_errors_total")
    assert after.value("turnout_requests_total") == before.value("turnout_requests_total")
