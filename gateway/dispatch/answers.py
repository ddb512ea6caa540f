"""Answers the gateway writes itself, and citations added to the backend's answers.

A RAG rule that refuses for lack of context still answers in the OpenAI format (streaming or not),
so chat clients show the refusal like any reply. Citations ride along where the ``openai`` client
keeps unknown fields: on the message (or the completion choice), and in a stream in the closing event
(see :mod:`gateway.dispatch.events`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.protocol import responses, sse
from gateway.protocol.requests import Endpoint
from gateway.protocol.usage import Usage


class StaticAnswer:
    """An answer that is already complete (same interface as an upstream response)."""

    __slots__ = ("_body", "content_type", "status")

    def __init__(self, body: bytes, content_type: str, status: int = 200) -> None:
        self._body = body
        self.content_type = content_type
        self.status = status

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        return None


def written_answer(endpoint: Endpoint, model: str, text: str, stream: bool) -> StaticAnswer:
    """A complete OpenAI response with ``text`` as the assistant's answer."""
    if endpoint == "responses":
        usage = Usage(0, 0).as_responses()
        if stream:
            return StaticAnswer(responses.written_events(model, text, usage), "text/event-stream")
        return StaticAnswer(orjson.dumps(responses.written(model, text, usage)), "application/json")
    ident = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if endpoint == "chat":
        obj, chunk_obj = "chat.completion", "chat.completion.chunk"
        whole_choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        deltas = [
            {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
    else:
        obj = chunk_obj = "text_completion"
        whole_choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        deltas = [{"index": 0, "text": text, "finish_reason": None}, {"index": 0, "text": "", "finish_reason": "stop"}]
    if not stream:
        body = {
            "id": ident,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [whole_choice],
            "usage": usage,
        }
        return StaticAnswer(orjson.dumps(body), "application/json")
    head = {"id": ident, "object": chunk_obj, "created": created, "model": model}
    # the usage event is passed on (or not) like an upstream's, by what the client asked for
    bodies = [{**head, "choices": [delta]} for delta in deltas] + [{**head, "choices": [], "usage": usage}]
    return StaticAnswer(b"".join(map(sse.json_event, bodies)) + sse.DONE_EVENT, "text/event-stream")


def with_citations(content: bytes, endpoint: Endpoint, citations: list[dict[str, Any]]) -> bytes:
    """A non-streaming JSON answer with ``citations`` on its message (or completion choice), and at the top
    level (a Responses answer: there only, beside ``output``)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    if not isinstance(body, dict):
        return content
    for choice in body.get("choices") or []:  # (a Responses answer has none)
        if isinstance(choice, dict):
            holder = choice.get("message") if endpoint == "chat" else choice
            if isinstance(holder, dict):
                holder["citations"] = citations
    body["citations"] = citations
    return orjson.dumps(body)
