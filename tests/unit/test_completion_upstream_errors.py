"""When the upstream answers badly, in-process: each upstream status becomes the README's envelope, bad
adapters never reach it, a stream that breaks or reports an error says so in-band (and the metrics record
the failure), and an adapter the upstream forgot is loaded again without the client noticing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.faulty_upstream import BASE, INBAND, MIDSTREAM, FaultyUpstream, fail
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    Scrape,
    assert_envelope,
    chat_body,
    completion_body,
    event_data,
    events,
    gateway_config,
    read_all,
    serve_gateway,
    write_adapter,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")

STATUS_FAULTS = [400, 401, 404, 422, 429, 500, 502, 503, 504]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Adapters that fail validation, each in one way, with the words the refusal must contain."""
    root = tmp_path_factory.mktemp("broken")
    no_config = write_adapter(root / "no-config")
    (no_config / "adapter_config.json").unlink()
    no_weights = write_adapter(root / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    garbled = write_adapter(root / "garbled")
    (garbled / "adapter_config.json").write_text("{not json")
    return {
        "too-wide": (write_adapter(root / "too-wide", rank=32), "rank 32 exceeds the server's max LoRA rank 8"),
        "ia3": (write_adapter(root / "ia3", peft_type="IA3"), "only LORA adapters can be served"),
        "alien": (write_adapter(root / "alien", base="someone/other-7b"), "someone/other-7b"),
        "no-config": (no_config, "adapter_config.json is missing"),
        "no-weights": (no_weights, "holds no adapter weights"),
        "garbled": (garbled, "is not readable JSON"),
        "ghost": (root / "does-not-exist", "is not a directory"),
    }


@pytest.fixture(scope="module")
async def gateway(
    upstream: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory, broken: dict[str, tuple[Path, str]]
) -> AsyncIterator[Gateway]:
    names = ["formal", "forgets", MIDSTREAM, INBAND, *(fail(status) for status in STATUS_FAULTS)]
    config = gateway_config(
        upstream.url,
        write_adapter(tmp_path_factory.mktemp("adapters") / "lora"),
        names,
        paths={name: path for name, (path, _) in broken.items()},
        vllm={"max_resident": 32},
        costs={"vllm": {"gpu_hour_usd": 2.0}},  # priced, so an error that charged anything would show it
    )
    async with serve_gateway(config) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_records(upstream: FaultyUpstream) -> None:
    upstream.clear()


def requests_of(before: Scrape, after: Scrape, model: str) -> dict[str, float]:
    """What turnout_requests_total gained between two scrapes for requests that asked for ``model``, by status."""
    gained: dict[str, float] = {}
    for status in {dict(labels)["status"] for labels in after.series("turnout_requests_total")}:
        grew = after.value("turnout_requests_total", policy=model, status=status) - before.value(
            "turnout_requests_total", policy=model, status=status
        )
        if grew:
            gained[status] = grew
    return gained


EXPECTED = {  # upstream status -> (gateway status, code, type), as the README's error table says
    400: (400, "upstream_rejected", "invalid_request_error"),
    422: (422, "upstream_rejected", "invalid_request_error"),
    500: (502, "upstream_error", "upstream_error"),
    502: (502, "upstream_error", "upstream_error"),
    503: (503, "upstream_unavailable", "upstream_unavailable"),
    429: (503, "upstream_unavailable", "upstream_unavailable"),
    504: (504, "upstream_timeout", "upstream_timeout"),
    401: (502, "upstream_error", "upstream_error"),  # vLLM refusing the gateway's own key is not the client's fault
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("upstream_status", list(EXPECTED))
async def test_each_upstream_status_becomes_the_documented_envelope(
    gateway: Gateway, upstream: FaultyUpstream, upstream_status: int, stream: bool
) -> None:
    """Before a stream's first byte, a failure is still a plain JSON envelope, not an SSE event."""
    model = fail(upstream_status)
    status, code, kind = EXPECTED[upstream_status]
    before = await gateway.scrape()
    response = await gateway.http.post(CHAT, json=chat_body(model, stream=stream))
    error = assert_envelope(response, status, code)
    assert error["type"] == kind
    if code == "upstream_rejected":  # relayed: the upstream's message and param
        assert (error["message"], error["param"]) == (f"the upstream fails with {upstream_status}", "max_tokens")
    assert response.headers["x-turnout-route"] == f"adapter:{model}"
    assert float(response.headers["x-turnout-cost-usd"]) == 0  # nothing was generated, nothing is charged
    assert len(upstream.seen(model)) == 1
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=model, status=str(status))
    assert requests_of(before, after, model) == {str(status): 1}
    assert after.value("turnout_errors_total", type=code) == before.value("turnout_errors_total", type=code) + 1


async def test_an_adapter_the_upstream_keeps_denying_is_resent_once_then_502(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    """vLLM answering 404 for an adapter it lists is healed once (re-read, resent), never in a loop."""
    response = await gateway.http.post(CHAT, json=chat_body(fail(404)))
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert len(upstream.seen(fail(404))) == 2
    assert upstream.models_reads == 1


async def test_an_adapter_the_upstream_keeps_denying_has_a_documented_code(gateway: Gateway) -> None:
    response = await gateway.http.post(CHAT, json=chat_body(fail(404)))
    assert_envelope(response, 502, "upstream_model_missing")
    assert "| 502 | `upstream_model_missing` |" in README


async def test_invalid_adapters_get_400_naming_the_problem_and_never_reach_the_upstream(
    gateway: Gateway, upstream: FaultyUpstream, broken: dict[str, tuple[Path, str]]
) -> None:
    before = await gateway.scrape()
    for name, (path, problem) in broken.items():
        response = await gateway.http.post(CHAT, json=chat_body(name))
        error = assert_envelope(response, 400, "invalid_adapter", param="model")
        assert error["type"] == "invalid_request_error"
        assert repr(name) in error["message"]
        assert problem in error["message"], error["message"]
        assert path.name in error["message"]  # names the file or directory at fault
    assert upstream.loads == []
    assert upstream.requests == []
    after = await gateway.scrape()
    errors = after.value("turnout_errors_total", type="invalid_adapter") - before.value(
        "turnout_errors_total", type="invalid_adapter"
    )
    assert errors == len(broken)
    for name in broken:
        assert requests_of(before, after, name) == {"400": 1}
        assert after.value("turnout_adapter_loads_total", adapter=name, outcome="failure") == 1


@pytest.mark.parametrize("path", [CHAT, TEXT])
async def test_a_stream_the_upstream_breaks_off_ends_with_an_error_event(
    gateway: Gateway, upstream: FaultyUpstream, path: str
) -> None:
    make = chat_body if path == CHAT else completion_body
    before = await gateway.scrape()
    response = await gateway.http.post(path, json=make(MIDSTREAM, stream=True))
    assert response.status_code == 200  # the headers had left before the upstream broke off
    received = events(response.content)
    [seen] = upstream.seen(MIDSTREAM)
    sent = events(bytes(seen.sent))
    assert sent
    assert received[: len(sent)] == sent  # what came before the break, untouched
    assert len(received) == len(sent) + 1
    error = event_data(received[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
    assert b"[DONE]" not in response.content
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=MIDSTREAM, status="502")
    assert requests_of(before, after, MIDSTREAM) == {"502": 1}
    assert after.value("turnout_errors_total", type="upstream_error") == (
        before.value("turnout_errors_total", type="upstream_error") + 1
    )


async def test_the_openai_client_raises_on_a_broken_stream(gateway: Gateway) -> None:
    stream = await gateway.openai.chat.completions.create(
        model=MIDSTREAM, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        await read_all(stream, received)
    assert received  # the events before the break were delivered as chunks
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_error"


async def test_a_non_streaming_answer_the_upstream_breaks_off_is_502(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(TEXT, json=completion_body(MIDSTREAM))
    error = assert_envelope(response, 502, "upstream_error")
    assert error["type"] == "upstream_error"
    assert len(upstream.seen(MIDSTREAM)) == 1
    scrape = await gateway.grown(before, "turnout_requests_total", 1, policy=MIDSTREAM, status="502")
    assert requests_of(before, scrape, MIDSTREAM) == {"502": 1}


async def test_an_in_band_upstream_error_is_passed_on_and_recorded_as_a_failure(
    gateway: Gateway, upstream: FaultyUpstream
) -> None:
    before = await gateway.scrape()
    response = await gateway.http.post(CHAT, json=chat_body(INBAND, stream=True))
    assert response.status_code == 200
    received = events(response.content)
    [seen] = upstream.seen(INBAND)
    sent = events(bytes(seen.sent))
    assert received[:-2] == sent[:-1]  # the upstream's events, its error event included, as it wrote them
    assert event_data(sent[-2])["error"]["message"] == "the engine failed mid-generation"
    assert received[-1] == b"data: [DONE]"
    assert "turnout" in event_data(received[-2])
    after = await gateway.grown(before, "turnout_requests_total", 1, policy=INBAND, status="502")
    assert requests_of(before, after, INBAND) == {"502": 1}  # the client got a 200, but the request failed
    assert after.value("turnout_errors_total", type="upstream_error") == (
        before.value("turnout_errors_total", type="upstream_error") + 1
    )

    stream = await gateway.openai.chat.completions.create(
        model=INBAND, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="the engine failed mid-generation"):
        await read_all(stream, [])


@pytest.mark.parametrize("stream", [False, True])
async def test_an_adapter_the_upstream_forgot_is_reloaded_and_the_client_sees_success(
    gateway: Gateway, upstream: FaultyUpstream, stream: bool
) -> None:
    first = await gateway.http.post(CHAT, json=chat_body("forgets", stream=stream))
    assert first.status_code == 200
    upstream.forget("forgets")  # as a restarted vLLM does
    upstream.clear()
    before = await gateway.scrape()

    again = await gateway.http.post(CHAT, json=chat_body("forgets", stream=stream))
    assert again.status_code == 200, again.text
    assert again.headers["x-turnout-route"] == "adapter:forgets"
    assert "error" not in again.text
    answered = [bytes(seen.sent) for seen in upstream.seen("forgets")]
    assert len(answered) == 2
    assert json.loads(answered[0])["error"]["code"] == 404  # the first attempt: vLLM did not know it
    if stream:
        assert events(again.content)[:-2] == events(answered[1])[:-2]
    else:
        assert again.json() == json.loads(answered[1])
    assert upstream.loads == ["forgets"]
    assert upstream.models_reads == 1  # residency was re-read from the upstream
    assert "forgets" in upstream.loaded
    after = await gateway.grown(before, "turnout_requests_total", 1, policy="forgets", status="200")
    assert requests_of(before, after, "forgets") == {"200": 1}
    assert after.value("turnout_errors_total") == before.value("turnout_errors_total")


async def test_the_base_model_keeps_answering_while_adapters_fail(gateway: Gateway, upstream: FaultyUpstream) -> None:
    for model in (fail(500), MIDSTREAM, BASE):
        await gateway.http.post(CHAT, json=chat_body(model, stream=True))
    reply = await gateway.openai.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert (await gateway.http.get("/health")).json() == {"status": "ok"}
