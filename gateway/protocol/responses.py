"""The OpenAI Responses API (``POST /v1/responses``) as the gateway speaks it: the request it checks, the
texts it counts, and the event stream it reads and writes.

**Requests.** Like the completion requests, only what the gateway relies on is checked (``model``,
``input``, ``instructions``, ``stream``, ``user``, ``metadata``); every other field goes to the backend
untouched. ``input`` is a string or a list of items; message items (``role`` and ``content``) are
checked, other items (function calls and their outputs, reasoning) pass as they are. What only a
stateful server can honour is refused with 400 ``unsupported_parameter`` naming the field:
``previous_response_id`` and ``conversation`` point at state kept by whichever server answered an earlier
turn, and a policy may send this turn elsewhere (or fall back); ``background`` answers later, by
``GET /v1/responses/{id}`` on the server that holds it. Clients send the conversation in ``input``
instead, which is what the OpenAI Agents SDK does by default.

**Streams** are named server-sent events, ``event: <type>`` then ``data: <json>`` and a blank line, with no
``data: [DONE]``: the last event is ``response.completed`` (or ``response.incomplete``,
``response.failed``), whose ``response`` carries the whole answer and its ``usage``
(``input_tokens``, ``output_tokens``, ``input_tokens_details.cached_tokens``).

May import: ``gateway.errors`` only (and pydantic, orjson).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from gateway.errors import InvalidRequest, TurnoutError

EVENT = b"event: "
DATA = b"data: "
END = b"\n\n"
# The events that end a stream, as the lines they start with: a client may hang up once it has one.
TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")
TERMINAL_EVENTS = tuple(EVENT + kind.encode() for kind in TERMINAL_TYPES)
# Events that carry generated text (or a tool call's arguments) in ``delta``.
DELTA_TYPES = (
    "response.output_text.delta",
    "response.refusal.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
    "response.function_call_arguments.delta",
)
DELTA_EVENTS = tuple(EVENT + kind.encode() for kind in DELTA_TYPES)
ROLES = ("user", "assistant", "system", "developer")
# Fields that name state only the server that answered an earlier request holds (see the docstring).
STATEFUL = {
    "previous_response_id": "it names a response kept by the server that answered it, and this turn may be "
    "routed elsewhere; send the conversation so far in input instead",
    "conversation": "a conversation is kept by the server that holds it, and this turn may be routed "
    "elsewhere; send the conversation so far in input instead",
}


class ResponsesRequest(BaseModel):
    """A Responses API request as far as the gateway checks it (``input`` items by :func:`check_input`)."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    input: StrictStr | Annotated[list[Any], Field(min_length=1)]
    instructions: StrictStr | None = None
    stream: StrictBool | None = False
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    metadata: dict[str, StrictStr] | None = None


def check_request(request: ResponsesRequest, data: dict[str, Any]) -> None:
    """Refuse what the gateway cannot honour, and malformed input items, naming the field."""
    for name, why in STATEFUL.items():
        if data.get(name) is not None:
            raise InvalidRequest(f"{name} is not supported here: {why}", param=name, code="unsupported_parameter")
    if data.get("background") is True:
        raise InvalidRequest(
            "background is not supported here: the gateway answers every request on its own connection",
            param="background",
            code="unsupported_parameter",
        )
    if isinstance(request.input, list):
        check_input(request.input)


def check_input(items: list[Any]) -> None:
    for n, item in enumerate(items):
        where = f"input.{n}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: an input item must be an object", param=where)
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequest(f"{where}.type: must be a string", param=f"{where}.type")
        if kind not in (None, "message"):
            continue  # function calls, their outputs, reasoning: the backend judges them
        if item.get("role") not in ROLES:
            roles = ", ".join(repr(role) for role in ROLES)
            raise InvalidRequest(f"{where}.role: a message's role must be one of {roles}", param=f"{where}.role")
        content = item.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(part, dict) for part in content)
        ):
            raise InvalidRequest(
                f"{where}.content: must be a string or a list of content parts (objects)", param=f"{where}.content"
            )


# --- the texts of a request and of its answer ---------------------------------------------------------


def _part_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def messages(items: str | list[Any]) -> Iterator[tuple[str, str]]:
    """The (role, text) of each message of ``input`` (a string is one user message)."""
    if isinstance(items, str):
        yield "user", items
        return
    for item in items:
        if isinstance(item, dict) and item.get("type") in (None, "message") and isinstance(item.get("role"), str):
            yield item["role"], " ".join(_part_texts(item.get("content")))


def user_texts(request: ResponsesRequest) -> list[str]:
    """The user messages' texts, in order."""
    return [text for role, text in messages(request.input) if role == "user"]


def input_texts(data: dict[str, Any]) -> tuple[list[str], int]:
    """The texts a request's prompt is made of (instructions, messages, tool calls and their outputs) and the
    number of items they come in (for the framing a template adds around each)."""
    texts: list[str] = []
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    items = data.get("input")
    if isinstance(items, str):
        return [*texts, items], 1 + len(texts)
    count = len(texts)
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        count += 1
        texts += _part_texts(item.get("content"))
        for key in ("arguments", "output"):  # a function call's arguments, a tool's output
            if isinstance(item.get(key), str):
                texts.append(item[key])
    return texts, count


def output_texts(body: dict[str, Any]) -> list[str]:
    """The generated texts of a whole response: message text, refusals, function call arguments."""
    texts: list[str] = []
    for item in body.get("output") or []:
        if not isinstance(item, dict):
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict):
                text = part.get("text") if part.get("type") != "refusal" else part.get("refusal")
                if isinstance(text, str):
                    texts.append(text)
        if isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
    return texts


def generated_texts(events: Iterable[bytes]) -> list[str]:
    """The generated text in stream events (their ``delta``), or in one whole response."""
    texts: list[str] = []
    for event in events:
        if event.startswith(b"{"):
            body = _loads(event)
            if body is not None:
                texts += output_texts(body)
            continue
        kind, body = parsed(event)
        if kind in DELTA_TYPES and body is not None and isinstance(body.get("delta"), str):
            texts.append(body["delta"])
    return texts


# --- events -------------------------------------------------------------------------------------------


def event(kind: str, body: Any) -> bytes:
    """One named event carrying ``body`` as compact JSON."""
    return EVENT + kind.encode() + b"\n" + DATA + orjson.dumps(body) + END


_TYPE = re.compile(rb'"type"\s*:\s*"([^"]*)"')


def parsed(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """An event's type (its ``event:`` line, else its data's ``type``) and its data object."""
    kind: str | None = None
    payload = b""
    for line in raw.split(b"\n"):
        if line.startswith(EVENT):
            kind = line[len(EVENT) :].strip().decode("utf-8", "replace")
        elif line.startswith(DATA):
            payload += line[len(DATA) :]
        elif line.startswith(b"data:"):
            payload += line[len(b"data:") :]
    body = _loads(payload)
    if kind is None and body is not None and isinstance(body.get("type"), str):
        kind = body["type"]
    return kind, body


def _loads(payload: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def error_event(error: TurnoutError, sequence_number: int) -> bytes:
    """A failure told in-band once the stream has started: the Responses API's ``error`` event (``code``,
    ``message``, ``param``), which also carries the OpenAI envelope's ``error`` object, so the ``openai``
    client raises it as an ``APIError`` as it does for chat streams."""
    inner = error.envelope()["error"]
    body = {
        "type": "error",
        "sequence_number": sequence_number,
        "code": error.code or error.error_type,
        "message": error.message,
        "param": error.param,
        "error": inner,
    }
    return event("error", body)


def upstream_error_message(kind: str | None, body: dict[str, Any] | None) -> str | None:
    """What the upstream said when it reported a failure in the stream (an ``error`` event, a
    ``response.failed``, or an envelope), else None."""
    if body is None:
        return None
    if kind == "error" or (kind is None and isinstance(body.get("error"), dict)):
        inner = body.get("error")
        message = body.get("message") or (inner.get("message") if isinstance(inner, dict) else None)
        return str(message or "no details")
    if kind == "response.failed":
        response = body.get("response")
        failure = response.get("error") if isinstance(response, dict) else None
        message = failure.get("message") if isinstance(failure, dict) else None
        return str(message or "the response failed")
    return None


# --- answers the gateway writes itself --------------------------------------------------------------


def written(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    """A complete response with ``text`` as the assistant's one message."""
    return _response(model, f"resp_{uuid.uuid4().hex}", "completed", [_message(f"msg_{uuid.uuid4().hex}", text)], usage)


def written_events(model: str, text: str, usage: dict[str, Any]) -> bytes:
    """The stream of :func:`written`: every event a client's stream helpers expect, in order."""
    response_id, item_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    started = _response(model, response_id, "in_progress", [], None)
    empty = {"type": "output_text", "text": "", "annotations": []}
    part = {"type": "output_text", "text": text, "annotations": []}
    item = _message(item_id, text)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**where, "part": empty}),
        ("response.output_text.delta", {**where, "delta": text, "logprobs": []}),
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": _response(model, response_id, "completed", [item], usage)}),
    ]
    return b"".join(event(kind, {"type": kind, "sequence_number": n, **body}) for n, (kind, body) in enumerate(steps))


def _message(item_id: str, text: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": "completed", "content": content}


def _response(
    model: str, response_id: str, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


__all__ = [
    "DELTA_EVENTS",
    "DELTA_TYPES",
    "TERMINAL_EVENTS",
    "TERMINAL_TYPES",
    "ResponsesRequest",
    "check_input",
    "check_request",
    "error_event",
    "event",
    "generated_texts",
    "input_texts",
    "messages",
    "output_texts",
    "parsed",
    "upstream_error_message",
    "user_texts",
    "written",
    "written_events",
]
