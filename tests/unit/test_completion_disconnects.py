"""Clients that leave before their answer is complete, in-process: the gateway closes its upstream
connection (the upstream sees the disconnect, as vLLM would before aborting the generation), records the
request as a 499 with estimated usage, and frees the adapter for others."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.faulty_upstream import SAFETY_S, SLOW, SLOW_START, FaultyUpstream, Seen
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    chat_body,
    completion_body,
    gateway_config,
    serve_gateway,
    write_adapter,
)


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    adapter_dir = write_adapter(tmp_path_factory.mktemp("adapters") / "lora")
    config = gateway_config(
        upstream.url,
        adapter_dir,
        [SLOW, SLOW_START, "formal"],
        policies={"desk": {"default": f"adapter:{SLOW}"}},
        costs={"vllm": {"gpu_hour_usd": 1.0}},
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


async def send_and_wait(
    gateway: Gateway, path: str, body: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send the whole request on it (not reading the answer yet)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    writer.write(head.encode() + raw)
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def in_flight(gateway: Gateway, adapter: str) -> int:
    listed = {a["name"]: a for a in (await gateway.http.get("/admin/adapters")).json()["adapters"]}
    count: int = listed[adapter]["in_flight"]
    return count


async def held_request(upstream: FaultyUpstream, model: str) -> Seen:
    await upstream.until(lambda: bool(upstream.seen(model)), f"a request for {model}")
    [seen] = upstream.seen(model)
    return seen


@pytest.mark.parametrize(("path", "make"), [(CHAT, chat_body), (TEXT, completion_body)])
async def test_leaving_mid_stream_closes_the_upstream_connection_and_counts_a_499(
    gateway: Gateway, upstream: FaultyUpstream, path: str, make: Any
) -> None:
    endpoint = "chat" if path == CHAT else "completions"
    before = await gateway.scrape()
    reader, writer = await send_and_wait(gateway, path, make("desk", stream=True))
    async with asyncio.timeout(SAFETY_S):
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        while b"data: " not in await reader.readline():
            pass  # the stream has started: an event reached the client
    seen = await held_request(upstream, SLOW)
    assert not seen.disconnected
    await hang_up(writer)

    await upstream.until(lambda: seen.disconnected, "the gateway hang up on the abandoned stream")
    after = await gateway.grown(
        before, "turnout_requests_total", 1, endpoint=endpoint, policy="desk", target=f"adapter:{SLOW}", status="499"
    )
    # no usage came back for the abandoned stream: it was counted here, and priced
    estimated = after.value("turnout_usage_estimated_total", route_kind="adapter")
    assert estimated == before.value("turnout_usage_estimated_total", route_kind="adapter") + 1
    assert after.value("turnout_cost_dollars_total", policy="desk") > before.value(
        "turnout_cost_dollars_total", policy="desk"
    )
    assert after.value("turnout_errors_total") == before.value("turnout_errors_total")  # leaving is no error
    assert await in_flight(gateway, SLOW) == 0  # the adapter's lease was released


async def test_closing_an_openai_stream_closes_the_upstream_connection(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    stream = await gateway.openai.chat.completions.create(
        model=SLOW, messages=[{"role": "user", "content": "a long story"}], stream=True
    )
    first = await anext(aiter(stream))
    assert first.choices
    seen = await held_request(upstream, SLOW)
    await stream.close()
    await upstream.until(lambda: seen.disconnected, "the gateway hang up on the closed stream")
    await gateway.grown(before, "turnout_requests_total", 1, policy=SLOW, status="499")


@pytest.mark.parametrize(("path", "make"), [(CHAT, chat_body), (TEXT, completion_body)])
async def test_leaving_before_a_non_streaming_answer_closes_the_upstream_connection(
    gateway: Gateway, upstream: FaultyUpstream, path: str, make: Any
) -> None:
    """The answer comes only when generation ends; the gateway watches the client meanwhile (once the request
    has lasted 20 ms) and stops the upstream when it leaves."""
    before = await gateway.scrape()
    _, writer = await send_and_wait(gateway, path, make(SLOW))
    seen = await held_request(upstream, SLOW)
    await hang_up(writer)
    await upstream.until(lambda: seen.disconnected, "the gateway hang up on the abandoned request")
    after = await gateway.grown(
        before, "turnout_requests_total", 1, policy=SLOW, target=f"adapter:{SLOW}", status="499"
    )
    assert after.value("turnout_errors_total") == before.value("turnout_errors_total")
    assert await in_flight(gateway, SLOW) == 0


async def test_after_clients_leave_the_same_adapter_serves_the_next_request(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    _, writer = await send_and_wait(gateway, CHAT, chat_body(SLOW, stream=True))
    seen = await held_request(upstream, SLOW)
    await hang_up(writer)
    await upstream.until(lambda: seen.disconnected, "the gateway hang up")
    upstream.release(SLOW)
    response = await gateway.http.post(CHAT, json=chat_body(SLOW, stream=True))
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")


async def test_leaving_a_stream_before_its_first_byte_closes_the_upstream_connection(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    _, writer = await send_and_wait(gateway, CHAT, chat_body(SLOW_START, stream=True))
    seen = await held_request(upstream, SLOW_START)
    await hang_up(writer)
    try:
        await upstream.until(lambda: seen.disconnected, "the gateway hang up before the stream began")
    finally:
        upstream.release(SLOW_START)


async def test_leaving_halfway_through_the_body_is_recorded_as_the_client_leaving(gateway: Gateway) -> None:
    before = await gateway.scrape()
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    body = json.dumps(chat_body("formal")).encode()
    head = f"POST {CHAT} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    await hang_up(writer)
    after = await gateway.grown(before, "turnout_requests_total", 1, endpoint="chat", target="none")
    assert (
        after.value("turnout_requests_total", status="499") == before.value("turnout_requests_total", status="499") + 1
    )
    assert after.value("turnout_errors_total") == before.value("turnout_errors_total")
