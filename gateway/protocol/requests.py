"""The OpenAI requests the gateway serves: their endpoints, the shapes it checks before routing.

Only what the gateway itself relies on is checked (``model``, ``messages``/``prompt``/``input``,
``stream``, ``stream_options``, ``user``, ``metadata``); every other field is passed to the backend
untouched, so new OpenAI parameters work without a gateway release and the backend judges their values.
The Responses API's own rules are in :mod:`gateway.protocol.responses`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from gateway.protocol.bodies import invalid, json_object
from gateway.protocol.responses import ResponsesRequest, check_request, user_texts

Endpoint = Literal["chat", "completions", "responses"]
# The one table of completion paths: the gateway serves them and sends them on under the same path.
PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
}
ENDPOINTS: dict[str, Endpoint] = {path: endpoint for endpoint, path in PATHS.items()}

# The rule of thumb for text no tokenizer has counted: about 4 characters of English per token.
CHARS_PER_TOKEN = 4


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class Request(_Open):
    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: Annotated[StrictStr, Field(max_length=256)] | None = None
    metadata: dict[str, StrictStr] | None = None


class ChatCompletionRequest(Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionRequest(Request):
    prompt: StrictStr | list[StrictStr] | list[int] | list[list[int]]


AnyRequest = Request | ResponsesRequest
_MODELS: dict[Endpoint, type[AnyRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "responses": ResponsesRequest,
}


def parse_request(endpoint: Endpoint, raw: bytes) -> tuple[dict[str, Any], AnyRequest]:
    """The body as a dict (to forward) and as a checked model; :class:`InvalidRequest` when malformed."""
    data = json_object(raw)
    try:
        request = _MODELS[endpoint].model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
    if isinstance(request, ResponsesRequest):
        check_request(request, data)
    return data, request


def endpoint_of(raw: bytes) -> Endpoint:
    """Which request a body is, for the endpoints that take either (``/v1/route/explain``): a Responses
    request when it has ``input`` and no ``messages``, else a chat request."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "chat"  # refused as malformed by the chat parser, with its message
    return "responses" if isinstance(data, dict) and "input" in data and "messages" not in data else "chat"


def asks_usage(data: dict[str, Any]) -> bool:
    """Whether a request body asks for usage in its stream (``stream_options.include_usage``)."""
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def last_user_text(request: AnyRequest) -> str:
    """The text routing matches against: the last user message, or the prompt."""
    if isinstance(request, ResponsesRequest):
        users = user_texts(request)
        return users[-1] if users else ""
    if isinstance(request, ChatCompletionRequest):
        for message in reversed(request.messages):
            if message.role == "user":
                content = message.content
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        return ""
    if isinstance(request, CompletionRequest) and isinstance(request.prompt, str):
        return request.prompt
    return ""
