"""Answers the gateway writes itself, and citations added to the backend's answers.

A RAG rule that refuses for lack of context still answers in the OpenAI format (streaming or not),
so chat clients show the refusal like any reply. Citations ride along where the ``openai`` client
keeps unknown fields: on the message (or the completion choice), and in a stream as one extra chunk
with no choices just before ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.api.protocol import Endpoint

_DONE = b"data: [DONE]"


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
    events = [
        b"data: "
        + orjson.dumps({"id": ident, "object": chunk_obj, "created": created, "model": model, "choices": [delta]})
        + b"\n\n"
        for delta in deltas
    ]
    return StaticAnswer(b"".join(events) + _DONE + b"\n\n", "text/event-stream")


def with_citations(content: bytes, endpoint: Endpoint, citations: list[dict[str, Any]]) -> bytes:
    """A non-streaming JSON answer with ``citations`` on its message (or completion choice)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    if not isinstance(body, dict):
        return content
    for choice in body.get("choices") or []:
        if isinstance(choice, dict):
            holder = choice.get("message") if endpoint == "chat" else choice
            if isinstance(holder, dict):
                holder["citations"] = citations
    body["citations"] = citations
    return orjson.dumps(body)


async def stream_with_citations(
    chunks: AsyncIterator[bytes], endpoint: Endpoint, citations: list[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """Pass SSE events through unchanged, adding one citations event just before ``data: [DONE]``.

    Events are re-split on their blank-line boundaries (an upstream write may hold several or half of
    one), but never re-serialised."""
    buffer = b""
    meta: dict[str, Any] | None = None
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.strip() == _DONE:
                yield _citation_event(meta, endpoint, citations)
            elif meta is None and event.startswith(b"data: {"):
                meta = _first_event_meta(event)
            yield event + b"\n\n"
    if buffer:
        yield buffer


def _first_event_meta(event: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(event[len(b"data: ") :])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in ("id", "object", "created", "model") if k in data}


def _citation_event(meta: dict[str, Any] | None, endpoint: Endpoint, citations: list[dict[str, Any]]) -> bytes:
    event = {
        "id": f"cite-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": int(time.time()),
        "model": "",
        **(meta or {}),
        "choices": [],
        "citations": citations,
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"
