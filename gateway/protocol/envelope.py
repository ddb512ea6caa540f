"""Reading the error an OpenAI-compatible server answered with (the gateway writes its own envelope with
:meth:`gateway.errors.TurnoutError.body`)."""

from __future__ import annotations

import orjson


def error_message(raw: bytes) -> tuple[str, str | None]:
    """The server's own error message and ``param`` (OpenAI envelope, or vLLM's older flat form), bounded."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return (text[:500] or "no details"), None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message")
            param = err.get("param")
            return (str(message)[:2000] if message else "no details"), (param if isinstance(param, str) else None)
        if isinstance(err, str):
            return err[:2000], None
    return "no details", None


def is_route_miss(raw: bytes) -> bool:
    """Whether an error body is a web framework's own "no such path" (FastAPI's ``{"detail": "Not Found"}``),
    not an OpenAI envelope: the server has no such endpoint, rather than no such model."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "detail" in data and "error" not in data


__all__ = ["error_message", "is_route_miss"]
