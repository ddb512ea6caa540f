"""Request parsing: what the gateway checks itself, and what it leaves to the backend."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.protocol.requests import ChatCompletionRequest, Endpoint, last_user_text, parse_request


def test_unknown_fields_pass_through_untouched() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 3, "logit_bias": {"1": 2}}'
    data, request = parse_request("chat", raw)
    assert data["top_k"] == 3
    assert data["logit_bias"] == {"1": 2}
    assert request.model == "m"


def test_errors_point_at_the_parameter() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request("chat", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}')
    assert caught.value.param is not None
    assert caught.value.param.startswith("messages.0.content")
    assert caught.value.status == 400


def test_completions_need_a_prompt() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request("completions", b'{"model": "m"}')
    assert caught.value.param == "prompt"
    _, request = parse_request("completions", b'{"model": "m", "prompt": [1, 2, 3]}')
    assert last_user_text(request) == ""


def test_last_user_text_reads_the_last_user_message_and_text_parts() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
            ],
        }
    )
    assert last_user_text(request) == "second"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": 7}]}', "messages.0.content"),
        (b'{"model": "m", "prompt": {"text": "hi"}}', "prompt"),
        (b'{"model": "m", "prompt": ["a", 1]}', "prompt"),
    ],
)
def test_a_value_of_no_accepted_type_names_the_field_not_the_type(raw: bytes, param: str) -> None:
    endpoint: Endpoint = "completions" if b"prompt" in raw else "chat"
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, raw)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
