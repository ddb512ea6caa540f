"""Token usage as OpenAI-compatible servers report it, and the texts of a request and its answer.

Upstreams report usage in a response's ``usage`` object (in a stream, in an event of its own or on the
last chunks); when they report none, the accounting counts the texts these functions find.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.protocol import responses, sse
from gateway.protocol.requests import Endpoint

PER_MESSAGE = 4  # role and separators a chat template adds around each message (OpenAI's rule of thumb)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    completion: int
    cached: int = 0
    estimated: bool = False

    def as_openai(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion, "total_tokens": self.total}

    def as_responses(self) -> dict[str, Any]:
        """The figures in the Responses API's shape."""
        return {
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": self.cached, "cache_write_tokens": 0},
            "output_tokens": self.completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.total,
        }

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def usage_of(body: Any) -> Usage | None:
    """The ``usage`` object of a parsed response or chunk, if it has a valid one: completions'
    ``prompt_tokens``/``completion_tokens``, or the Responses API's ``input_tokens``/``output_tokens``."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    responses_shape = "input_tokens" in usage
    prompt = usage.get("input_tokens" if responses_shape else "prompt_tokens")
    completion = usage.get("output_tokens" if responses_shape else "completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("input_tokens_details" if responses_shape else "prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if isinstance(cached, int) else 0)


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def prompt_texts(endpoint: Endpoint, data: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of a request's prompt, and the tokens its framing adds (per chat message)."""
    if endpoint == "responses":
        said, items = responses.input_texts(data)
        return said, PER_MESSAGE * items + 3
    if endpoint == "chat":
        texts: list[str] = []
        messages = data.get("messages") or []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return texts, PER_MESSAGE * len(messages) + 3
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return [prompt], 0
    if isinstance(prompt, list):
        if all(isinstance(p, int) for p in prompt):
            return [], len(prompt)  # one prompt given as token ids
        return [p for p in prompt if isinstance(p, str)], sum(len(p) for p in prompt if isinstance(p, list))
    return [], 0


def generated_texts(endpoint: Endpoint, events: Iterable[bytes]) -> list[str]:
    """The text in SSE ``data:`` events (stream deltas) or in one whole JSON answer."""
    if endpoint == "responses":
        return responses.generated_texts(events)
    texts: list[str] = []
    for event in events:
        body = sse.parsed(event)
        choices = body.get("choices") if body is not None else None
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            if endpoint == "completions":
                part = choice.get("text")
            else:
                holder = choice.get("delta") or choice.get("message") or {}
                part = holder.get("content") if isinstance(holder, dict) else None
            if isinstance(part, str):
                texts.append(part)
    return texts


__all__ = ["PER_MESSAGE", "Usage", "generated_texts", "prompt_texts", "usage_of", "usage_of_body"]
