"""When the upstream cannot serve, in-process: nothing listening, silent beyond the read timeout (before
or during a stream), or every adapter slot busy. Clients get 503/504 envelopes or an in-band error, the
gateway hangs up on what it gave up, and a policy falls back instead where it can."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.faulty_upstream import BASE, SILENT, SLOW, FaultyUpstream
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    assert_envelope,
    chat_body,
    completion_body,
    event_data,
    events,
    gateway_config,
    nowhere,
    read_all,
    serve_gateway,
    serve_upstream,
)

READ_TIMEOUT_S = 0.3
FALLBACK_TO_BASE = {"default": "adapter:formal", "fallbacks": ["base"]}


@pytest.fixture(scope="module")
async def down(adapter_dir: Path) -> AsyncIterator[Gateway]:
    """A gateway whose upstream address has nothing listening. Every request tries it (a trial as often as
    the breaker allows: always), so each one meets the failure itself; the circuit's refusals are tested
    end to end."""
    config = gateway_config(
        nowhere(), adapter_dir, ["formal"], policies={"chain": FALLBACK_TO_BASE}, breaker={"open_s": 1e-6}
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(scope="module")
async def impatient(adapter_dir: Path) -> AsyncIterator[tuple[Gateway, FaultyUpstream]]:
    """A gateway that waits at most READ_TIMEOUT_S for the upstream to say something."""
    policies = {"patient": {"default": f"adapter:{SILENT}", "fallbacks": ["base"]}}
    async with serve_upstream() as upstream:
        config = gateway_config(
            upstream.url, adapter_dir, [SILENT, SLOW], vllm={"read_timeout_s": READ_TIMEOUT_S}, policies=policies
        )
        async with serve_gateway(config) as gateway:
            yield gateway, upstream


@pytest.fixture(scope="module")
async def cramped(adapter_dir: Path) -> AsyncIterator[tuple[Gateway, FaultyUpstream]]:
    """A gateway with one adapter slot, and little patience for it."""
    async with serve_upstream() as upstream:
        config = gateway_config(
            upstream.url,
            adapter_dir,
            [SLOW, "formal"],
            vllm={"max_resident": 1, "capacity_wait_s": 0.1},
            policies={"busy": FALLBACK_TO_BASE},
        )
        async with serve_gateway(config) as gateway:
            yield gateway, upstream


@pytest.fixture(autouse=True)
def _fresh_records(impatient: tuple[Gateway, FaultyUpstream], cramped: tuple[Gateway, FaultyUpstream]) -> None:
    impatient[1].clear()
    cramped[1].clear()


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        (CHAT, chat_body(BASE), f"base:{BASE}"),
        (CHAT, chat_body(BASE, stream=True), f"base:{BASE}"),
        (TEXT, completion_body("formal"), "adapter:formal"),
        (TEXT, completion_body("formal", stream=True), "adapter:formal"),
    ],
)
async def test_an_upstream_that_is_not_listening_gives_503(
    down: Gateway, path: str, body: dict[str, Any], route: str
) -> None:
    before = await down.scrape()
    response = await down.http.post(path, json=body)
    error = assert_envelope(response, 503, "upstream_unavailable")
    assert error["type"] == "upstream_unavailable"
    assert "cannot connect" in error["message"]
    assert response.headers["x-turnout-route"] == route
    await down.grown(before, "turnout_requests_total", 1, policy=body["model"], target=route, status="503")


async def test_a_chain_on_an_upstream_that_is_down_ends_with_its_last_error(down: Gateway) -> None:
    before = await down.scrape()
    response = await down.http.post(CHAT, json=chat_body("chain"))
    assert_envelope(response, 503, "upstream_unavailable")
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    assert response.headers["x-turnout-fallback-from"] == "adapter:formal"
    await down.grown(
        before,
        "turnout_fallbacks_total",
        1,
        policy="chain",
        from_target="adapter:formal",
        reason="upstream_unavailable",
    )
    ready = await down.http.get("/ready")
    assert_envelope(ready, 503, "upstream_unavailable")
    assert (await down.http.get("/health")).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_silent_past_the_read_timeout_gives_504_and_is_hung_up_on(
    impatient: tuple[Gateway, FaultyUpstream], stream: bool
) -> None:
    gateway, upstream = impatient
    before = await gateway.scrape()
    response = await gateway.http.post(CHAT, json=chat_body(SILENT, stream=stream))
    error = assert_envelope(response, 504, "upstream_timeout")  # nothing was sent: an envelope, even for a stream
    assert error["type"] == "upstream_timeout"
    await upstream.until(lambda: upstream.seen(SILENT)[0].disconnected, "the gateway hang up on the silent request")
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=SILENT, status="504")
    assert after.value("turnout_errors_total", type="upstream_timeout") == (
        before.value("turnout_errors_total", type="upstream_timeout") + 1
    )


async def test_a_stream_that_goes_silent_ends_with_an_in_band_timeout(
    impatient: tuple[Gateway, FaultyUpstream],
) -> None:
    gateway, upstream = impatient
    before = await gateway.scrape()
    response = await gateway.http.post(TEXT, json=completion_body(SLOW, stream=True))  # never released
    assert response.status_code == 200
    received = events(response.content)
    [seen] = upstream.seen(SLOW)
    sent = events(bytes(seen.sent))
    assert sent
    assert received[:-1] == sent
    error = event_data(received[-1])["error"]
    assert (error["type"], error["code"]) == ("upstream_timeout", "upstream_timeout")
    await upstream.until(lambda: seen.disconnected, "the gateway hang up on the stalled stream")
    await gateway.grown(before, "turnout_requests_total", 1, policy=SLOW, status="504")


async def test_the_openai_client_raises_on_a_stream_that_went_silent(impatient: tuple[Gateway, FaultyUpstream]) -> None:
    gateway, _ = impatient
    stream = await gateway.openai.chat.completions.create(
        model=SLOW, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        await read_all(stream, [])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_timeout"


async def test_a_policy_falls_back_from_a_target_that_timed_out(impatient: tuple[Gateway, FaultyUpstream]) -> None:
    gateway, upstream = impatient
    before = await gateway.scrape()
    response = await gateway.http.post(CHAT, json=chat_body("patient"))
    assert response.status_code == 200
    assert response.headers["x-turnout-route"] == f"base:{BASE}"
    assert response.headers["x-turnout-fallback-from"] == f"adapter:{SILENT}"
    assert [seen.model for seen in upstream.requests] == [SILENT, BASE]
    await gateway.grown(
        before,
        "turnout_fallbacks_total",
        1,
        policy="patient",
        from_target=f"adapter:{SILENT}",
        reason="upstream_timeout",
    )


async def test_with_every_slot_busy_another_adapter_gets_503_until_one_is_free(
    cramped: tuple[Gateway, FaultyUpstream],
) -> None:
    gateway, upstream = cramped
    before = await gateway.scrape()
    async with gateway.http.stream("POST", CHAT, json=chat_body(SLOW, stream=True)) as holding:
        assert holding.status_code == 200  # SLOW holds the only slot for as long as this stream lasts
        await upstream.until(lambda: bool(upstream.seen(SLOW)), "the held stream")

        refused = await gateway.http.post(CHAT, json=chat_body("formal"))
        error = assert_envelope(refused, 503, "adapter_capacity_exhausted")
        assert error["type"] == "service_unavailable"
        assert "formal" in error["message"]

        rescued = await gateway.http.post(CHAT, json=chat_body("busy"))
        assert rescued.status_code == 200
        assert rescued.headers["x-turnout-route"] == f"base:{BASE}"
        assert rescued.headers["x-turnout-fallback-from"] == "adapter:formal"

        assert upstream.unloads == []  # an adapter serving a stream is never evicted
        assert upstream.seen("formal") == []
        upstream.release(SLOW)
        finished = events(await holding.aread())
    assert finished[-1] == b"data: [DONE]"

    served = await gateway.http.post(CHAT, json=chat_body("formal"))
    assert served.status_code == 200, served.text
    assert upstream.unloads == [SLOW]  # idle now, so evicted for formal
    assert upstream.loads[-1] == "formal"
    after = await gateway.scrape()
    for name, by in (("turnout_errors_total", 1), ("turnout_fallbacks_total", 1)):
        labels = {"type": "adapter_capacity_exhausted"} if name == "turnout_errors_total" else {"policy": "busy"}
        assert after.value(name, **labels) == before.value(name, **labels) + by, name
    loads = after.value("turnout_adapter_loads_total", adapter="formal", outcome="no_capacity")
    assert loads - before.value("turnout_adapter_loads_total", adapter="formal", outcome="no_capacity") == 2
    listed = {a["name"]: a for a in (await gateway.http.get("/admin/adapters")).json()["adapters"]}
    assert (listed["formal"]["resident"], listed[SLOW]["resident"]) == (True, False)
    assert json.loads(served.content)["choices"]
