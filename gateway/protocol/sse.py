"""Server-sent events as OpenAI-compatible servers write them: ``data: <json>`` events ended by a blank line,
and ``data: [DONE]`` last.

The gateway passes an upstream's events through as bytes; these are the few rules it needs to find
events in a byte stream, read one, and write its own.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import TurnoutError

DATA = b"data: "
END = b"\n\n"  # the blank line that ends an event
DONE = b"data: [DONE]"  # the last event of every OpenAI stream (without its END)
DONE_EVENT = DONE + END


def event(payload: bytes) -> bytes:
    """One complete event carrying ``payload`` (already JSON)."""
    return DATA + payload + END


def json_event(body: Any) -> bytes:
    """One complete event carrying ``body`` serialised as compact JSON."""
    return DATA + orjson.dumps(body) + END


def parsed(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a ``data:`` event (with or without its END), or None if it carries none."""
    payload = event[len(DATA) :] if event.startswith(DATA) else event
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def is_done(event: bytes) -> bool:
    """Whether ``event`` (without its END, trailing blanks allowed) is ``data: [DONE]``."""
    return event.rstrip() == DONE


def error_event(error: TurnoutError) -> bytes:
    """An error told in-band, once the response has started: the OpenAI envelope as an event of its own,
    which the ``openai`` client raises as an ``APIError``."""
    return event(error.body())


__all__ = ["DATA", "DONE", "DONE_EVENT", "END", "error_event", "event", "is_done", "json_event", "parsed"]
