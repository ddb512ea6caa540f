"""``POST /v1/responses`` when something goes wrong, in-process: refusals naming the field, the upstream's
statuses as the README's envelopes, streams that break or report an error ending with the Responses API's
``error`` event (which the ``openai`` client raises), and clients that leave (the upstream sees the
gateway hang up, a 499 is recorded)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.faulty_upstream import BASE, INBAND, MIDSTREAM, SAFETY_S, SLOW, FaultyUpstream, fail
from tests.support.inprocess import (
    RESPONSES,
    Gateway,
    Scrape,
    assert_envelope,
    events,
    gateway_config,
    named_event,
    read_all,
    responses_body,
    serve_gateway,
)

STATUSES = {  # upstream status -> (gateway status, code), as the README's error table says
    400: (400, "upstream_rejected"),
    422: (422, "upstream_rejected"),
    500: (502, "upstream_error"),
    503: (503, "upstream_unavailable"),
    429: (503, "upstream_unavailable"),
    504: (504, "upstream_timeout"),
    501: (400, "unsupported_endpoint"),
}


@pytest.fixture(scope="module")
async def gateway(upstream: FaultyUpstream, adapter_dir: Path) -> AsyncIterator[Gateway]:
    names = ["formal", SLOW, MIDSTREAM, INBAND, *(fail(status) for status in STATUSES)]
    config = gateway_config(
        upstream.url, adapter_dir, names, vllm={"max_resident": 16}, costs={"vllm": {"gpu_hour_usd": 1.0}}
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def gained(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


MALFORMED = [
    pytest.param(b'{"model": "formal", "input": ', None, id="truncated-json"),
    pytest.param(b'["formal"]', None, id="array"),
    pytest.param(b'{"input": "hi"}', "model", id="model-missing"),
    pytest.param(b'{"model": "formal"}', "input", id="input-missing"),
    pytest.param(b'{"model": "formal", "input": 42}', "input", id="input-number"),
    pytest.param(b'{"model": "formal", "input": []}', "input", id="input-empty"),
    pytest.param(b'{"model": "formal", "input": ["hi"]}', "input.0", id="item-string"),
    pytest.param(b'{"model": "formal", "input": [{"role": "wizard", "content": "hi"}]}', "input.0.role", id="role"),
    pytest.param(b'{"model": "formal", "input": [{"content": "hi"}]}', "input.0.role", id="role-missing"),
    pytest.param(
        b'{"model": "formal", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": 7}]}',
        "input.1.content",
        id="content-number",
    ),
    pytest.param(b'{"model": "formal", "input": "hi", "instructions": ["x"]}', "instructions", id="instructions"),
    pytest.param(b'{"model": "formal", "input": "hi", "stream": "yes"}', "stream", id="stream"),
    pytest.param(b'{"model": "formal", "input": "hi", "metadata": {"a": 1}}', "metadata.a", id="metadata"),
]


@pytest.mark.parametrize(("body", "param"), MALFORMED)
async def test_malformed_bodies_get_a_400_naming_the_field(
    gateway: Gateway, upstream: FaultyUpstream, body: bytes, param: str | None
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, content=body, headers={"content-type": "application/json"})
    error = assert_envelope(response, 400, None)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.requests == []
    after = await gateway.grown(before, "turnout_requests_total", 1, endpoint="responses", policy="none", status="400")
    assert gained(before, after, "turnout_requests_total", endpoint="chat") == 0


async def test_other_item_kinds_pass_to_the_backend(gateway: Gateway, upstream: FaultyUpstream) -> None:
    items = [
        {"role": "user", "content": "What is the weather?"},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    response = await gateway.http.post(RESPONSES, json={"model": "formal", "input": items})
    assert response.status_code == 200, response.text
    [seen] = upstream.seen("formal")
    assert seen.data["input"] == items


@pytest.mark.parametrize(
    ("field", "value"), [("previous_response_id", "resp_123"), ("conversation", "conv_1"), ("background", True)]
)
async def test_state_only_a_server_holds_is_refused_naming_the_field(
    gateway: Gateway, upstream: FaultyUpstream, field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.openai.responses.create(model="formal", input="hi", extra_body={field: value})
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("unsupported_parameter", field)
    assert field in body["message"]
    assert upstream.requests == []


async def test_an_unknown_model_is_404_and_a_wrong_method_405(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.openai.responses.create(model="no-such-model", input="hi")
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["code"], caught.value.body["param"]) == ("model_not_found", "model")
    assert_envelope(await gateway.http.get(RESPONSES), 405, "method_not_allowed")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("upstream_status", list(STATUSES))
async def test_each_upstream_status_becomes_the_documented_envelope(
    gateway: Gateway, upstream: FaultyUpstream, upstream_status: int, stream: bool
) -> None:
    model = fail(upstream_status)
    status, code = STATUSES[upstream_status]
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, json=responses_body(model, stream=stream))
    error = assert_envelope(response, status, code)
    if code == "upstream_rejected":
        assert (error["message"], error["param"]) == (f"the upstream fails with {upstream_status}", "max_tokens")
    if code == "unsupported_endpoint":
        assert error["message"].startswith(f"adapter:{model} cannot serve POST /v1/responses: ")
    assert float(response.headers["x-turnout-cost-usd"]) == 0
    assert len(upstream.seen(model)) == 1
    after = await gateway.grown(before, "turnout_requests_total", 1, endpoint="responses", policy=model)
    assert gained(before, after, "turnout_requests_total", policy=model, status=str(status)) == 1
    assert gained(before, after, "turnout_errors_total", type=code) == 1


async def test_a_stream_the_upstream_breaks_off_ends_with_an_error_event(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, json=responses_body(MIDSTREAM, stream=True))
    assert response.status_code == 200
    received = events(response.content)
    [seen] = upstream.seen(MIDSTREAM)
    sent = events(bytes(seen.sent))
    assert sent
    assert received[:-1] == sent  # what came before the break, untouched
    kind, data = named_event(received[-1])
    assert kind == "error"
    assert (data["type"], data["code"], data["sequence_number"]) == ("error", "upstream_error", len(sent))
    assert data["error"]["code"] == "upstream_error"  # the envelope's object too, for the openai client
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=MIDSTREAM, status="502")
    assert gained(before, after, "turnout_errors_total", type="upstream_error") == 1


async def test_the_openai_client_raises_on_a_broken_stream(gateway: Gateway) -> None:
    stream = await gateway.openai.responses.create(model=MIDSTREAM, input="hi", stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        await read_all(stream, received)
    assert [event.type for event in received] == ["response.created", "response.in_progress"]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_error"


async def test_a_non_streaming_answer_the_upstream_breaks_off_is_502(gateway: Gateway) -> None:
    response = await gateway.http.post(RESPONSES, json=responses_body(MIDSTREAM))
    assert_envelope(response, 502, "upstream_error")


async def test_an_in_band_upstream_error_is_passed_on_and_recorded_as_a_failure(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(RESPONSES, json=responses_body(INBAND, stream=True))
    assert response.status_code == 200
    [seen] = upstream.seen(INBAND)
    assert events(response.content) == events(bytes(seen.sent))  # the upstream's own error event, as written
    assert named_event(events(response.content)[-1])[0] == "error"
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=INBAND, status="502")
    assert gained(before, after, "turnout_errors_total", type="upstream_error") == 1

    stream = await gateway.openai.responses.create(model=INBAND, input="hi", stream=True)
    received: list[Any] = []
    await read_all(stream, received)  # the Responses API's own error event is an event, not an exception
    assert received[-1].type == "error"
    assert received[-1].message == "the engine failed mid-generation"


async def test_leaving_mid_stream_closes_the_upstream_connection_and_counts_a_499(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    raw = json.dumps(responses_body(SLOW, stream=True)).encode()
    head = f"POST {RESPONSES} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}"
    head += "\r\n\r\n"
    writer.write(head.encode() + raw)
    await writer.drain()
    async with asyncio.timeout(SAFETY_S):
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        while b"event: response.created" not in await reader.readline():
            pass  # the stream has started: an event reached the client
    await upstream.until(lambda: bool(upstream.seen(SLOW)), "the held request")
    [seen] = upstream.seen(SLOW)
    writer.close()
    await writer.wait_closed()
    await upstream.until(lambda: seen.disconnected, "the gateway hang up on the abandoned stream")
    after = await gateway.grown(
        before, "turnout_requests_total", 1, endpoint="responses", target=f"adapter:{SLOW}", status="499"
    )
    assert gained(before, after, "turnout_usage_estimated_total", route_kind="adapter") == 1
    assert gained(before, after, "turnout_errors_total") == 0  # leaving is no error


async def test_closing_a_non_streaming_request_early_closes_the_upstream_connection(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    request = asyncio.create_task(gateway.openai.responses.create(model=SLOW, input="a long story"))
    await upstream.until(lambda: bool(upstream.seen(SLOW)), "the held request")
    [seen] = upstream.seen(SLOW)
    request.cancel()  # the client gives up: its connection closes
    with pytest.raises(asyncio.CancelledError):
        await request
    await upstream.until(lambda: seen.disconnected, "the gateway hang up")
    await gateway.grown(before, "turnout_requests_total", 1, endpoint="responses", policy=SLOW, status="499")


async def test_the_base_model_keeps_answering(gateway: Gateway) -> None:
    reply = await gateway.openai.responses.create(model=BASE, input="hi")
    assert reply.output_text
