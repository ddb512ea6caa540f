"""The caps on what one request may carry: messages, characters per message and in all, for every endpoint's
shape (chat messages, Responses input, completion prompts), each refusal naming its cap and field."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.protocol.caps import InputCaps, check_input

CAPS = InputCaps(max_messages=3, max_message_chars=10, max_input_chars=25)


def refusal(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_input(data, CAPS)
    assert caught.value.status == 400
    return caught.value


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    "data",
    [
        {"messages": [user("a" * 6), user("b" * 6), user("c")]},  # at every bound ("user" is text too)
        {"prompt": "a" * 10},
        {"prompt": [1, 2]},  # token ids: 4 characters each
        {"input": "short"},
        {"model": "m"},  # nothing to count
    ],
)
def test_within_the_caps_passes(data: dict[str, Any]) -> None:
    check_input(data, CAPS)


def test_too_many_messages() -> None:
    error = refusal({"messages": [user("a")] * 4})
    assert (error.code, error.param) == ("too_many_messages", "messages")
    assert "limits.max_messages" in error.message


def test_a_message_too_long_names_its_index() -> None:
    error = refusal({"messages": [user("a"), user([{"type": "text", "text": "b" * 11}])]})
    assert (error.code, error.param) == ("message_too_long", "messages.1")
    assert "limits.max_message_chars" in error.message


def test_too_much_text_in_all() -> None:
    error = refusal({"input": [user("a" * 6), user("b" * 6), user("c" * 6)]})
    assert (error.code, error.param) == ("input_too_long", "input")
    assert "limits.max_input_chars" in error.message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"prompt": "a" * 11}, "message_too_long"),
        ({"prompt": list(range(3))}, "message_too_long"),  # 12 characters' worth of token ids
        ({"prompt": ["a"] * 4}, "too_many_messages"),
        ({"input": "a" * 11}, "message_too_long"),
    ],
)
def test_prompts_and_inputs_are_capped_too(data: dict[str, Any], code: str) -> None:
    assert refusal(data).code == code


def test_field_names_do_not_count_but_every_string_value_does() -> None:
    check_input({"messages": [{"role": "assistant", "content": None, "name": "a"}]}, CAPS)  # 10 characters
    assert refusal({"messages": [{"role": "user", "content": "abcdef", "name": "a"}]}).code == "message_too_long"


def test_a_deeply_nested_message_is_counted_without_recursion() -> None:
    nested: Any = "abcdefghijk"
    for _ in range(100_000):
        nested = [nested]
    assert refusal({"messages": [{"role": "user", "content": nested}]}).code == "message_too_long"


def test_a_body_shorter_than_the_caps_is_not_walked_but_its_messages_are_counted() -> None:
    long = {"messages": [user("a" * 50)]}
    check_input(long, CAPS, body_bytes=10)  # told the body is short: trusted (a body holds every character)
    assert refusal(long).code == "message_too_long"  # not told: walked
    with pytest.raises(InvalidRequest) as caught:
        check_input({"messages": [user("a")] * 4}, CAPS, body_bytes=10)
    assert caught.value.code == "too_many_messages"
