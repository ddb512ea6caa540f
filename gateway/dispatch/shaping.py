"""What routing sees of a request, and how a request is reshaped for the target it was sent to.

Shaping rewrites only what the target asks for: the model name the backend knows, the target's system
prompt, and its caps on sampling parameters. A body that needs none of these is forwarded as the
client's own bytes. A Responses request gets the system prompt in front of its ``instructions`` (its
system message) and the ``max_tokens`` cap on ``max_output_tokens``; its streams always end with usage,
so nothing is asked for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.protocol.requests import (
    CHARS_PER_TOKEN,
    AnyRequest,
    ChatCompletionRequest,
    CompletionRequest,
    Endpoint,
    asks_usage,
    last_user_text,
)
from gateway.protocol.responses import ResponsesRequest, input_texts, user_texts
from routing import RequestFeatures, Target

CONVERSATION_HEADER = "x-turnout-conversation"


def request_features(
    request: AnyRequest, request_id: str, tenant: str | None, headers: Mapping[str, str], *, conversation: bool = True
) -> RequestFeatures:
    """What routing sees of ``request``; ``conversation`` False skips working out the conversation (a hash of
    the first user message) when no split of the policy keys on it."""
    first_user: str | list[Any] | None
    if isinstance(request, ResponsesRequest):
        texts, count = input_texts({"instructions": request.instructions, "input": request.input})
        chars = sum(len(text) for text in texts)
        users = user_texts(request)
        first_user = users[0] if users else None
    elif isinstance(request, ChatCompletionRequest):
        chars = sum(len(m.content) if isinstance(m.content, str) else 64 for m in request.messages)
        count = len(request.messages)
        first_user = next((m.content for m in request.messages if m.role == "user"), None)
    else:
        assert isinstance(request, CompletionRequest)
        prompt = request.prompt
        if isinstance(prompt, str):
            chars = len(prompt)
        else:  # several prompts, or token ids (each about one token's worth of characters)
            chars = sum(len(p) if isinstance(p, str) else CHARS_PER_TOKEN for p in prompt)
        count = 1
        first_user = prompt if isinstance(prompt, str) else None
    metadata = request.metadata or {}
    thread = headers.get(CONVERSATION_HEADER) or metadata.get("conversation_id")
    if thread is None and conversation and isinstance(first_user, str):
        # Every turn of one conversation repeats its first user message: it identifies the conversation.
        thread = hashlib.blake2b(first_user.encode(), digest_size=8).hexdigest()
    return RequestFeatures(
        model=request.model,
        tenant=tenant,
        headers=headers,
        metadata=metadata,
        user=request.user,
        text=last_user_text(request),
        message_count=count,
        token_estimate=chars // CHARS_PER_TOKEN,  # rough, but tells short prompts from long
        request_id=request_id,
        conversation=thread,
    )


def shape_body(raw: bytes, data: dict[str, Any], endpoint: Endpoint, target: Target, upstream_model: str) -> bytes:
    """The body to send for ``target``: the client's bytes when nothing changes, else a rewritten copy."""
    if (
        data.get("model") == upstream_model
        and target.system_prompt is None
        and not target.caps
        and (endpoint == "responses" or not data.get("stream") or asks_usage(data))
    ):
        return raw
    return orjson.dumps(shape_data(data, endpoint, target, upstream_model))


def shape_data(data: dict[str, Any], endpoint: Endpoint, target: Target, upstream_model: str) -> dict[str, Any]:
    """A copy of the request body shaped for ``target`` (the client's own dict is never changed)."""
    caps = target.caps
    body = {**data, "model": upstream_model}
    if endpoint == "responses":
        return _shape_responses(body, target)
    if body.get("stream") and not asks_usage(body):
        # Every stream is costed from the upstream's own usage figures; the client sees them only if it
        # asked (gateway.dispatch.events drops them otherwise).
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    if target.system_prompt is not None:
        _add_system_prompt(body, endpoint, target.system_prompt)
    if caps.max_tokens is not None:
        # Both spellings are bounded when present (backends differ in which one they read); the default
        # goes in the one every OpenAI-compatible server reads.
        for key in ("max_tokens", "max_completion_tokens"):
            given = body.get(key)
            if key == "max_tokens" or key in body:
                body[key] = min(given, caps.max_tokens) if isinstance(given, int) else caps.max_tokens
    _cap_sampling(body, target)
    return body


def _shape_responses(body: dict[str, Any], target: Target) -> dict[str, Any]:
    prompt, caps = target.system_prompt, target.caps
    if prompt is not None:
        given = body.get("instructions")
        body["instructions"] = f"{prompt}\n\n{given}" if isinstance(given, str) and given else prompt
    if caps.max_tokens is not None:
        given = body.get("max_output_tokens")
        body["max_output_tokens"] = min(given, caps.max_tokens) if isinstance(given, int) else caps.max_tokens
    _cap_sampling(body, target)
    return body


def _cap_sampling(body: dict[str, Any], target: Target) -> None:
    caps = target.caps
    for key, cap in (("temperature", caps.temperature), ("top_p", caps.top_p)):
        if cap is not None:
            given = body.get(key)
            # absent means the backend's default of 1.0, which the cap also bounds
            body[key] = min(given if isinstance(given, int | float) else 1.0, cap)


def _add_system_prompt(body: dict[str, Any], endpoint: Endpoint, prompt: str) -> None:
    if endpoint == "completions":
        if isinstance(body.get("prompt"), str):
            body["prompt"] = f"{prompt}\n\n{body['prompt']}"
        return
    messages = list(body["messages"])
    first = messages[0] if messages else None
    if (
        isinstance(first, dict)
        and first.get("role") in ("system", "developer")
        and isinstance(first.get("content"), str)
    ):
        messages[0] = {**first, "content": f"{prompt}\n\n{first['content']}"}
    else:
        messages.insert(0, {"role": "system", "content": prompt})
    body["messages"] = messages
