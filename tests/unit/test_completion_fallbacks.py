"""Policies' fallback chains, in-process: a target that fails before its first byte gives way to the next,
the response and the metrics say so, a client error is never retried elsewhere, and an exhausted chain
answers with the last target's error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.faulty_upstream import BASE, LOAD_FAILS, FaultyUpstream, fail
from tests.support.inprocess import (
    Gateway,
    Scrape,
    assert_envelope,
    chat_body,
    completion_body,
    event_data,
    events,
    gateway_config,
    serve_gateway,
    write_adapter,
)

POLICIES: dict[str, Any] = {
    "rescue": {
        "description": "two failing adapters, then the base model",
        "default": f"adapter:{fail(500)}",
        "fallbacks": [f"adapter:{fail(503)}", "base"],
    },
    "exhausted": {"default": f"adapter:{fail(500)}", "fallbacks": [f"adapter:{fail(503)}"]},
    "rejected": {"default": f"adapter:{fail(400)}", "fallbacks": ["base"]},
    "rejected-422": {"default": f"adapter:{fail(422)}", "fallbacks": ["base"]},
    "overloaded": {"default": f"adapter:{fail(429)}", "fallbacks": ["adapter:formal"]},
    "refused-credentials": {"default": f"adapter:{fail(401)}", "fallbacks": ["base"]},
    "cannot-load": {"default": f"adapter:{LOAD_FAILS}", "fallbacks": ["base"]},
    "invalid": {"default": "adapter:broken", "fallbacks": ["adapter:formal"]},
    "desk": {
        "rules": [
            {
                "name": "vip",
                "when": {"header": {"name": "x-tier", "equals": "vip"}},
                "target": f"adapter:{fail(500)}",
                "fallbacks": ["adapter:formal"],  # the rule's own chain replaces the policy's
            },
            {"name": "formal-words", "when": {"keywords": ["memo"]}, "target": "adapter:formal"},
        ],
        "default": "base",
        "fallbacks": [f"adapter:{fail(503)}"],
    },
}


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    adapters = tmp_path_factory.mktemp("adapters")
    names = ["formal", fail(500), fail(503), fail(400), fail(422), fail(429), fail(401), LOAD_FAILS]
    config = gateway_config(
        upstream.url,
        write_adapter(adapters / "lora"),
        names,
        paths={"broken": write_adapter(adapters / "broken", rank=64)},  # above vllm.max_lora_rank
        vllm={"max_resident": 16},
        policies=POLICIES,
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def fallbacks(scrape: Scrape, policy: str) -> dict[tuple[str, str], float]:
    """turnout_fallbacks_total of ``policy`` by (from_target, reason)."""
    found: dict[tuple[str, str], float] = {}
    for labels, value in scrape.series("turnout_fallbacks_total").items():
        named = dict(labels)
        if named["policy"] == policy and value:
            found[named["from_target"], named["reason"]] = value
    return found


def asked(upstream: FaultyUpstream) -> list[str]:
    """The models the upstream was asked to complete, in order."""
    return [seen.model for seen in upstream.requests]


def since(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


async def test_failing_targets_give_way_down_the_chain_to_one_that_answers(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    raw = await gateway.openai.chat.completions.with_raw_response.create(
        model="rescue", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert raw.parse().choices[0].message.content
    headers = raw.headers
    assert headers["x-turnout-route"] == f"base:{BASE}"
    assert headers["x-turnout-fallback-from"] == f"adapter:{fail(500)},adapter:{fail(503)}"
    assert headers["x-turnout-policy"] == "rescue"
    assert headers["x-turnout-rule"] == "default"
    assert float(headers["x-turnout-cost-usd"]) >= 0
    assert asked(upstream) == [fail(500), fail(503), BASE]
    after = await gateway.grown(
        before, "turnout_requests_total", 1, policy="rescue", target=f"base:{BASE}", status="200"
    )
    assert since(fallbacks(before, "rescue"), fallbacks(after, "rescue")) == {
        (f"adapter:{fail(500)}", "upstream_error"): 1,
        (f"adapter:{fail(503)}", "upstream_unavailable"): 1,
    }
    one_request = after.value("turnout_requests_total", policy="rescue") - before.value(
        "turnout_requests_total", policy="rescue"
    )
    assert one_request == 1  # however many targets it took


async def test_a_stream_falls_back_when_its_target_fails_before_the_first_byte(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    response = await gateway.http.post("/v1/completions", json=completion_body("rescue", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)},adapter:{fail(503)}"
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    received = events(response.content)
    assert received[-1] == b"data: [DONE]"
    assert "turnout" in event_data(received[-2])
    assert all(b'"error"' not in event for event in received)  # the failures never reach the stream
    [answered] = upstream.seen(BASE)
    assert events(bytes(answered.sent))[:-2] == received[:-2]


async def test_an_exhausted_chain_answers_with_the_last_targets_error(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post("/v1/chat/completions", json=chat_body("exhausted"))
    assert_envelope(response, 503, "upstream_unavailable")  # fail-503's, not fail-500's 502
    assert response.headers["x-turnout-route"] == f"adapter:{fail(503)}"
    assert response.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)}"
    assert response.headers["x-turnout-policy"] == "exhausted"
    assert asked(upstream) == [fail(500), fail(503)]
    after = await gateway.grown(
        before, "turnout_requests_total", 1, policy="exhausted", target=f"adapter:{fail(503)}", status="503"
    )
    assert since(fallbacks(before, "exhausted"), fallbacks(after, "exhausted")) == {
        (f"adapter:{fail(500)}", "upstream_error"): 1
    }
    assert after.value("turnout_errors_total", type="upstream_unavailable") == (
        before.value("turnout_errors_total", type="upstream_unavailable") + 1
    )


@pytest.mark.parametrize(("policy", "status"), [("rejected", 400), ("rejected-422", 422)])
async def test_an_upstream_client_error_is_relayed_and_never_tried_elsewhere(
    gateway: Gateway, upstream: FaultyUpstream, policy: str, status: int
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post("/v1/chat/completions", json=chat_body(policy))
    error = assert_envelope(response, status, "upstream_rejected", param="max_tokens")
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"the upstream fails with {status}"  # the upstream's own words
    assert response.headers["x-turnout-route"] == f"adapter:{fail(status)}"
    assert "x-turnout-fallback-from" not in response.headers
    assert asked(upstream) == [fail(status)]  # the base model was never asked
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=policy, status=str(status))
    assert since(fallbacks(before, policy), fallbacks(after, policy)) == {}


@pytest.mark.parametrize(
    ("policy", "failed", "reason", "answered"),
    [
        ("overloaded", f"adapter:{fail(429)}", "upstream_unavailable", "adapter:formal"),
        ("refused-credentials", f"adapter:{fail(401)}", "upstream_error", f"base:{BASE}"),
        ("cannot-load", f"adapter:{LOAD_FAILS}", "upstream_error", f"base:{BASE}"),
        ("invalid", "adapter:broken", "invalid_adapter", "adapter:formal"),
    ],
)
async def test_each_failure_that_falls_back_is_counted_by_its_reason(
    gateway: Gateway, upstream: FaultyUpstream, policy: str, failed: str, reason: str, answered: str
) -> None:
    """Overload (429), vLLM refusing the gateway's own credentials, an adapter vLLM cannot load and an
    adapter that fails validation all fall back; the last two never reach a completion call."""
    before = await gateway.scrape()
    response = await gateway.http.post("/v1/chat/completions", json=chat_body(policy))
    assert response.status_code == 200, response.text
    assert response.headers["x-turnout-route"] == answered
    assert response.headers["x-turnout-fallback-from"] == failed
    scrape = await gateway.grown(before, "turnout_requests_total", 1, policy=policy, target=answered, status="200")
    assert since(fallbacks(before, policy), fallbacks(scrape, policy)) == {(failed, reason): 1}
    name = failed.removeprefix("adapter:")
    if policy == "cannot-load":
        assert upstream.loads == [LOAD_FAILS]
        assert upstream.seen(name) == []
    if policy == "invalid":
        assert "broken" not in upstream.loads  # refused before anything was sent to vLLM
        assert upstream.seen(name) == []
        assert scrape.value("turnout_adapter_loads_total", adapter="broken", outcome="failure") >= 1


async def test_rules_decide_and_a_rules_own_fallbacks_replace_the_policys(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    vip = await gateway.http.post("/v1/chat/completions", json=chat_body("desk"), headers={"x-tier": "vip"})
    assert vip.status_code == 200
    assert vip.headers["x-turnout-rule"] == "vip"
    assert vip.headers["x-turnout-route"] == "adapter:formal"
    assert vip.headers["x-turnout-fallback-from"] == f"adapter:{fail(500)}"
    assert fail(503) not in asked(upstream)  # the policy's own fallback was not in this rule's chain

    memo = await gateway.http.post(
        "/v1/chat/completions",
        json={"model": "desk", "messages": [{"role": "user", "content": "Draft a MEMO please"}]},
    )
    assert memo.headers["x-turnout-rule"] == "formal-words"
    assert memo.headers["x-turnout-route"] == "adapter:formal"
    assert "x-turnout-fallback-from" not in memo.headers

    plain = await gateway.http.post("/v1/chat/completions", json=chat_body("desk"))
    assert plain.headers["x-turnout-rule"] == "default"
    assert plain.headers["x-turnout-route"] == f"base:{BASE}"
    assert plain.headers["x-turnout-policy"] == "desk"
    assert "x-turnout-fallback-from" not in plain.headers
    assert asked(upstream) == [fail(500), "formal", "formal", BASE]

    decided = {
        dict(labels)["rule"]: value
        for labels, value in (await gateway.scrape()).series("turnout_routing_decisions_total").items()
        if dict(labels)["policy"] == "desk"
    }
    assert decided == {"vip": 1, "formal-words": 1, "default": 1}  # no other test asks this policy
