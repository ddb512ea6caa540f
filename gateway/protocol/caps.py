"""What one completion request (or ``POST /v1/route/explain``) may carry: messages, and characters of text in
all and in any one message, checked before anything routes, embeds or forwards it.

The body's byte cap (``server.max_body_bytes``) bounds memory; these bound the work a small body can still
ask for (50,000 one-word messages fit in 1 MB, and every one is scanned by keyword rules and joined for the
embedding) and refuse what no served model could read anyway. Characters are counted over every string value
in a message or prompt (its role too), field names aside; token ids count as ``CHARS_PER_TOKEN`` characters
each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocol.requests import CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class InputCaps:
    max_messages: int
    max_message_chars: int
    max_input_chars: int


def check_input(data: dict[str, Any], caps: InputCaps, body_bytes: int | None = None) -> None:
    """:class:`InvalidRequest` (400) naming the cap when ``data``'s messages, prompt or input exceed it.

    ``body_bytes``, the raw body's length, spares the walk over the text when the whole body is shorter than
    either character cap (a JSON body holds at least one byte per character): the usual request."""
    field, items = _items(data)
    if field is None:
        return
    if len(items) > caps.max_messages:
        raise InvalidRequest(
            f"{field} has {len(items):,} items; at most {caps.max_messages:,} are accepted (limits.max_messages)",
            param=field,
            code="too_many_messages",
        )
    if body_bytes is not None and body_bytes <= min(caps.max_message_chars, caps.max_input_chars):
        return
    total = 0
    for index, item in enumerate(items):
        size = _chars(item)
        if size > caps.max_message_chars:
            raise InvalidRequest(
                f"{field}.{index} holds {size:,} characters of text; at most {caps.max_message_chars:,} are "
                "accepted in one message (limits.max_message_chars)",
                param=f"{field}.{index}",
                code="message_too_long",
            )
        total += size
        if total > caps.max_input_chars:
            raise InvalidRequest(
                f"{field} holds more than {caps.max_input_chars:,} characters of text; that is the most one "
                "request may carry (limits.max_input_chars)",
                param=field,
                code="input_too_long",
            )


def _items(data: dict[str, Any]) -> tuple[str | None, list[Any]]:
    for field in ("messages", "input", "prompt"):
        value = data.get(field)
        if value is None:
            continue
        if isinstance(value, list) and not (value and isinstance(value[0], int)):
            return field, value  # messages, input items, prompts (token-id lists among them)
        return field, [value]  # one text, or one prompt of token ids
    return None, []


def _chars(value: Any) -> int:
    """Characters of text in a JSON value: its strings' lengths (dict values only), token ids at 4 each.
    Walked with a stack, not recursion: a hostile body may nest as deep as the JSON parser allows."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            total += CHARS_PER_TOKEN
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return total


__all__ = ["InputCaps", "check_input"]
