"""The OpenAI surface through the gateway, driven by the official ``openai`` client, against real vLLM."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.gateway import GatewayProcess
from tests.support.stack import ADAPTERS, BASE, turnout_info

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about the weather in the harbour today."}
]


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _chat(client: openai.OpenAI, model: str) -> str:
    response = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0)
    content = response.choices[0].message.content
    assert content, f"{model} gave an empty answer"
    return content


def test_chat_non_streaming_base_and_adapters_give_distinct_answers(client: openai.OpenAI) -> None:
    # Sequential on purpose: vLLM's CPU kernels mix up base and LoRA requests batched together.
    answers = {model: _chat(client, model) for model in (BASE, *ADAPTERS[:2])}
    assert len(set(answers.values())) == 3, answers
    # Greedy decoding is deterministic: asking again gives the same text, so the difference is the adapter.
    assert _chat(client, ADAPTERS[0]) == answers[ADAPTERS[0]]


@pytest.mark.parametrize("model", [BASE, *ADAPTERS[:2]])
def test_chat_streaming_with_usage_in_last_chunk(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 8
    assert usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("model", [BASE, *ADAPTERS[:2]])
def test_completions_streaming_and_not(client: openai.OpenAI, model: str) -> None:
    whole = client.completions.create(model=model, prompt="The ship left the harbour", max_tokens=6, temperature=0)
    assert whole.choices[0].text
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 6
    parts = list(
        client.completions.create(
            model=model, prompt="The ship left the harbour", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text


def test_response_headers_carry_route_and_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=ADAPTERS[0], messages=PROMPT, max_tokens=2, extra_headers={"x-request-id": "trace-abc.123"}
    )
    assert raw.headers["x-turnout-route"] == f"adapter:{ADAPTERS[0]}"
    assert raw.headers["x-request-id"] == "trace-abc.123"
    assert raw.parse().choices[0].message.content is not None

    raw = client.chat.completions.with_raw_response.create(model=BASE, messages=PROMPT, max_tokens=2)
    assert raw.headers["x-turnout-route"] == f"base:{BASE}"
    generated = raw.headers["x-request-id"]  # made when the client sends none: process prefix and counter
    assert re.fullmatch(r"[0-9a-f]{20,}", generated)
    again = client.chat.completions.with_raw_response.create(model=BASE, messages=PROMPT, max_tokens=2)
    assert again.headers["x-request-id"] != generated


def test_hostile_request_id_is_replaced(gateway: GatewayProcess) -> None:
    response = httpx.get(gateway.url + "/health", headers={"x-request-id": "bad id with spaces"})
    assert response.headers["x-request-id"] != "bad id with spaces"
    assert re.fullmatch(r"[0-9a-f]{20,}", response.headers["x-request-id"])


def test_models_lists_every_callable_name_with_what_serves_it(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {BASE, *ADAPTERS}
    assert turnout_info(models[BASE])["kind"] == "base"
    for name in ADAPTERS:
        info = turnout_info(models[name])
        assert info["kind"] == "adapter"
        assert info["base"] == BASE
        assert isinstance(info["resident"], bool)
    assert client.models.retrieve(ADAPTERS[1]).id == ADAPTERS[1]


def test_unknown_model_is_404_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=2)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any], dict[str, str]]:
    response = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=60)
    return response.status_code, response.json(), dict(response.headers)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "tiny-llama", "messages": [', "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "tiny-llama", "messages": []}', "messages"),
        (b'{"model": "tiny-llama", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role"),
        (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b"\xff\xfe garbage", "not valid JSON"),
    ],
)
def test_malformed_requests_get_400_envelope(gateway: GatewayProcess, body: bytes, needle: str) -> None:
    status, payload, headers = _post(gateway.url + "/v1/chat/completions", body)
    assert status == 400, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"] or needle == payload["error"]["param"]
    assert "x-request-id" in headers


def test_oversized_body_gets_413(gateway: GatewayProcess) -> None:
    big = b'{"model": "tiny-llama", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    status, payload, _ = _post(gateway.url + "/v1/completions", big)
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"


def test_upstream_rejection_is_relayed_as_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=PROMPT, max_tokens=100_000)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"]


def test_unknown_endpoint_and_method_get_envelopes(gateway: GatewayProcess) -> None:
    response = httpx.get(gateway.url + "/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = httpx.get(gateway.url + "/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_health_and_ready(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
