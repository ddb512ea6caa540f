"""The Responses API's wire format as the gateway reads and writes it: the texts it counts, the usage it
reads, and the answers it writes itself (a RAG refusal), which the ``openai`` client's own stream helpers
must accept."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.dispatch.answers import written_answer
from gateway.errors import InvalidRequest, UpstreamError
from gateway.protocol import responses
from gateway.protocol.requests import endpoint_of, parse_request
from gateway.protocol.usage import Usage, generated_texts, prompt_texts, usage_of


def test_a_written_answer_is_a_response_the_client_reads() -> None:
    answer = written_answer("responses", "kb-bot", "Nothing in the handbook covers that.", stream=False)
    parsed = Response.model_validate(orjson.loads(answer._body))
    assert parsed.output_text == "Nothing in the handbook covers that."
    assert parsed.status == "completed"


def test_a_written_stream_satisfies_the_clients_stream_helpers() -> None:
    answer = written_answer("responses", "kb-bot", "Nothing covers that.", stream=True)
    raw = [event for event in answer._body.split(responses.END) if event]
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    handled = []
    for event in raw:
        kind, body = responses.parsed(event)
        assert body is not None
        assert kind == body["type"]
        handled += state.handle_event(adapter.validate_python(body))
    assert [e.sequence_number for e in handled] == list(range(len(raw)))
    assert handled[-1].type == "response.completed"
    assert handled[-1].response.output_text == "Nothing covers that."
    assert generated_texts("responses", raw) == ["Nothing covers that."]


def test_usage_is_read_in_either_shape() -> None:
    responses_usage = {"input_tokens": 10, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 4}}
    assert usage_of({"usage": responses_usage}) == Usage(10, 3, 4)
    assert usage_of({"usage": {"prompt_tokens": 10, "completion_tokens": 3}}) == Usage(10, 3)
    assert usage_of({"usage": None}) is None
    assert Usage(10, 3, 4).as_responses()["input_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 0}


def test_the_prompts_texts_are_instructions_messages_and_tool_outputs() -> None:
    data = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "sunny"},
        ],
    }
    texts, framing = prompt_texts("responses", data)
    assert texts == ["Be brief.", "Weather?", "{}", "sunny"]
    assert framing == 4 * 4 + 3
    assert prompt_texts("responses", {"input": "hello"}) == (["hello"], 4 + 3)


def test_routing_reads_the_last_user_message() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": "first"}, {"role": "user", "content": "last"}]}
    _, request = parse_request("responses", orjson.dumps(body))
    assert isinstance(request, responses.ResponsesRequest)
    assert responses.user_texts(request) == ["first", "last"]
    assert endpoint_of(orjson.dumps(body)) == "responses"
    assert endpoint_of(b'{"model": "m", "messages": []}') == "chat"
    assert endpoint_of(b"not json") == "chat"


@pytest.mark.parametrize(
    ("items", "param"),
    [([3], "input.0"), ([{"role": "robot", "content": "x"}], "input.0.role"), ([{"type": 1}], "input.0.type")],
)
def test_input_items_are_checked_by_position(items: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        responses.check_input(items)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


def test_an_error_event_is_both_the_responses_event_and_the_envelope() -> None:
    event = responses.error_event(UpstreamError("it broke"), 7)
    kind, body = responses.parsed(event.removesuffix(responses.END))
    assert kind == "error"
    assert body == {
        "type": "error",
        "sequence_number": 7,
        "code": "upstream_error",
        "message": "it broke",
        "param": None,
        "error": {"message": "it broke", "type": "upstream_error", "param": None, "code": "upstream_error"},
    }
    assert responses.upstream_error_message(kind, body) == "it broke"
    failed = {"type": "response.failed", "response": {"error": {"message": "no memory"}}}
    assert responses.upstream_error_message("response.failed", failed) == "no memory"
    assert responses.upstream_error_message("response.output_text.delta", {"delta": "x"}) is None
