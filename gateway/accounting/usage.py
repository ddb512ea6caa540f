"""Token usage: as the upstream reports it, or counted here when it reports none.

The gateway asks every upstream for usage (``stream_options.include_usage`` on streams), so counting is
the exception: a stream the client abandoned, or an upstream that ignores the option. Then the prompt
and the text generated so far are counted with the model's own tokenizer (the base model's
``tokenizer.json`` for vLLM targets, litellm's counter for OpenAI models) and the figure is marked
estimated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.api.protocol import Endpoint

log = logging.getLogger("turnout.accounting")

_PER_MESSAGE = 4  # role and separators a chat template adds around each message (OpenAI's rule of thumb)
_CHARS_PER_TOKEN = 4  # when no tokenizer is available, or the text is too long to tokenize on the loop
_TOKENIZED_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    completion: int
    cached: int = 0
    estimated: bool = False

    def as_openai(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion, "total_tokens": self.total}

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def usage_of(body: Any) -> Usage | None:
    """The ``usage`` object of a parsed response or chunk, if it has a valid one."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached if isinstance(cached, int) else 0)


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def prompt_texts(endpoint: Endpoint, data: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of a request's prompt, and the tokens its framing adds (per chat message)."""
    if endpoint == "chat":
        texts: list[str] = []
        messages = data.get("messages") or []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return texts, _PER_MESSAGE * len(messages) + 3
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
    texts: list[str] = []
    for event in events:
        payload = event[len(b"data: ") :] if event.startswith(b"data: ") else event
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        choices = body.get("choices") if isinstance(body, dict) else None
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


class TokenCounter:
    """Counts tokens for estimates: vLLM targets with the base model's tokenizer, OpenAI ones by model."""

    def __init__(self, tokenizer_file: Path | None, openai_count: Callable[[str, str], int] | None = None) -> None:
        self._tokenizer: Any = None
        if tokenizer_file is not None and tokenizer_file.is_file():
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            except Exception as exc:  # a tokenizer it cannot read only makes estimates rougher
                log.warning(
                    "cannot read %s (%s); token estimates fall back to 4 characters a token", tokenizer_file, exc
                )
        self._openai_count = openai_count

    def count(self, texts: list[str], openai_model: str | None) -> int:
        if not texts:
            return 0
        if sum(len(text) for text in texts) > _TOKENIZED_CHARS:
            # Counting runs on the event loop: past this size (a hostile prompt, an hour-long stream) the
            # estimate counts characters rather than stall every other request for a tokenizer pass.
            return sum(len(text) for text in texts) // _CHARS_PER_TOKEN
        if openai_model is not None and self._openai_count is not None:
            return sum(self._openai_count(openai_model, text) for text in texts)
        if self._tokenizer is not None:
            return sum(len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False))
        return sum(len(text) for text in texts) // _CHARS_PER_TOKEN

    def estimate(
        self,
        endpoint: Endpoint,
        data: dict[str, Any],
        generated: list[str],
        openai_model: str | None,
        added: list[str] | None = None,
    ) -> Usage:
        """Usage counted here: the client's prompt, what the gateway ``added`` to it, and the text generated."""
        texts, framing = prompt_texts(endpoint, data)
        prompt = self.count(texts + (added or []), openai_model) + framing
        return Usage(prompt, self.count(["".join(generated)], openai_model) if generated else 0, estimated=True)


__all__ = ["TokenCounter", "Usage", "generated_texts", "prompt_texts", "usage_of", "usage_of_body"]
