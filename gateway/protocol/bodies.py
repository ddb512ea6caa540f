"""Reading a JSON request body and telling the client, in one sentence, what is wrong with it.

Every endpoint that takes a JSON object (completions, responses, embeddings, document ingestion) refuses
a malformed one the same way: an empty body, invalid JSON or something other than an object says so,
and a schema problem names the field (``param``) as it is in the client's body.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.errors import InvalidRequest

# How pydantic names the branch of a union a value failed in (``str``, ``list[int]``): not a field of the body.
_UNION_BRANCH = re.compile(r"^(?:str|int|float|bool|none|[a-z-]+\[.*\])$")


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; :class:`InvalidRequest` when it is empty, not JSON or not an object."""
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The location of a validation error in the client's body, without union branch names."""
    for position, part in enumerate(loc):
        if isinstance(part, str) and _UNION_BRANCH.match(part):
            return loc[:position]
    return loc


def invalid(exc: ValidationError) -> InvalidRequest:
    """The client's error for a body that failed validation: its first problem, naming the field."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(p) for p in field_path(first["loc"])) or None
    count = exc.error_count()
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    return InvalidRequest(f"{param or 'body'}: {first['msg']}{more}", param=param)


__all__ = ["field_path", "invalid", "json_object"]
