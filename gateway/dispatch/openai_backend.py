"""The OpenAI target: hosted fine-tunes (``ft:gpt-4o-mini-...``) and plain OpenAI models, through litellm.

litellm is imported on first use only (it takes seconds to import), with its price map read from the
copy it ships (never fetched at run time). Unlike the vLLM path, the answer is re-serialised from
litellm's objects, so a stream is re-framed as OpenAI SSE events; the first chunk is awaited before
the answer is handed back, so a failure before the first byte can still fall back.

Responses API requests go through litellm's own Responses support (``litellm.aresponses``), which calls
the server's ``/responses``: OpenAI's, or any server under ``openai.api_base`` that has one (vLLM does).
Its events are re-framed as named SSE events. litellm rewrites the response id (it encodes where the
response came from) and raises ``max_output_tokens`` below 16 to 16, OpenAI's minimum; the ``cost`` it
adds to ``usage`` is dropped (the gateway prices the request itself).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from gateway.config.model import OpenAIConfig
from gateway.dispatch.answers import StaticAnswer
from gateway.dispatch.backend import Answer, Call, Opened
from gateway.dispatch.shaping import shape_data
from gateway.errors import TurnoutError, UnsupportedEndpoint, UpstreamError, UpstreamUnavailable
from gateway.failures import Boundary, translate
from gateway.protocol import responses, sse
from gateway.upstream.breaker import Breaker, BreakerSettings
from routing import Target

_NOT_FORWARDED = {"model", "messages", "prompt", "stream", "metadata", "user"}
# What ``litellm.aresponses`` takes by name; every other field of the request goes in ``extra_body``.
_RESPONSES_NAMED = {
    "include",
    "instructions",
    "max_output_tokens",
    "prompt",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
    "service_tier",
    "safety_identifier",
}


class LiteLLMStream:
    """A litellm stream as OpenAI SSE bytes (first chunk already received)."""

    def __init__(self, first: Any, rest: AsyncIterator[Any]) -> None:
        self._first = first
        self._rest = rest
        self.status = 200
        self.content_type = "text/event-stream"

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        yield _event(self._first)
        async for chunk in self._rest:
            yield _event(chunk)
        yield sse.DONE_EVENT

    def close(self) -> None:
        # Nothing to do here: when the client leaves, iteration stops and litellm's stream object,
        # no longer referenced, releases its connection.
        return None


def _event(chunk: Any) -> bytes:
    return sse.event(str(chunk.model_dump_json(exclude_none=True)).encode())


class LiteLLMResponseStream(LiteLLMStream):
    """A litellm Responses stream as named SSE events (first event already received); no ``[DONE]``."""

    async def chunks(self) -> AsyncIterator[bytes]:
        yield _response_event(self._first)
        async for chunk in self._rest:
            yield _response_event(chunk)


def _dumped(value: Any) -> dict[str, Any]:
    """A litellm Responses object as the JSON OpenAI writes, without the ``cost`` litellm adds to usage."""
    body: dict[str, Any] = value.model_dump(mode="json", exclude_none=True, warnings=False)
    response = body.get("response", body)
    usage = response.get("usage") if isinstance(response, dict) else None
    if isinstance(usage, dict):
        usage.pop("cost", None)
    return body


def _response_event(chunk: Any) -> bytes:
    body = _dumped(chunk)
    return responses.event(str(body.get("type") or getattr(chunk, "type", "message")), body)


class OpenAIBackend:
    def __init__(
        self,
        config: OpenAIConfig,
        breaker: BreakerSettings | None = None,
        on_circuit_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self._lib: Any = None
        self._breaker_settings = breaker
        self._on_circuit_change = on_circuit_change
        self.breakers: dict[str, Breaker] = {}  # by model, made on its first request

    def _breaker(self, model: str) -> Breaker | None:
        if self._breaker_settings is None:
            return None
        found = self.breakers.get(model)
        if found is None:
            found = self.breakers[model] = Breaker(f"openai:{model}", self._breaker_settings, self._on_circuit_change)
        return found

    def prepare(self) -> None:
        """Import litellm now (blocking: call it in a thread) rather than on the first request."""
        self._litellm()

    def _litellm(self) -> Any:
        if self._lib is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at run time
            os.environ.setdefault("LITELLM_LOG", "ERROR")
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            self._lib = litellm
        return self._lib

    def count_tokens(self, model: str, text: str) -> int:
        """Tokens in ``text`` by ``model``'s tokenizer, as litellm counts them (for usage estimates)."""
        return int(self._litellm().token_counter(model=model, text=text))

    def api_key(self) -> str:
        config = self.config
        if config.api_key is not None:
            return config.api_key.get_secret_value()
        if config.api_key_file is not None:
            try:
                return Path(config.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UpstreamError(f"cannot read openai.api_key_file {config.api_key_file}: {exc}") from exc
        return os.environ.get("OPENAI_API_KEY", "")

    async def open(self, target: Target, call: Call) -> Opened:
        """Open the answer of ``target`` (an OpenAI model), unless its circuit is open: then refuse at once,
        so that the rule's fallbacks take the request."""
        breaker = self._breaker(target.name)
        if breaker is None:
            return await self._open(target, call)
        if not breaker.allow():
            raise UpstreamUnavailable(
                f"OpenAI model {target.name!r} keeps failing: its circuit is open for another "
                f"{breaker.retry_in_s():.1f} s (breaker.*; last: {breaker.last_error})",
                code="circuit_open",
            )
        try:
            opened = await self._open(target, call)
        except UpstreamError as exc:
            if exc.falls_back:  # the upstream's failure, not a refusal of this request
                breaker.failed(exc.message)
            else:
                breaker.succeeded()
            raise
        except BaseException:
            breaker.abandoned()
            raise
        breaker.succeeded()
        return opened

    async def _open(self, target: Target, call: Call) -> Opened:
        if call.endpoint == "responses":
            return await self._open_responses(target, call)
        litellm = self._litellm()
        data = shape_data(call.data, call.endpoint, target, target.name)
        stream = bool(data.get("stream"))
        params = {k: v for k, v in data.items() if k not in _NOT_FORWARDED}
        if stream:
            params["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        common = {
            "model": target.name,
            "custom_llm_provider": "openai",
            "api_base": self.config.api_base,
            "api_key": self.api_key() or "none",
            "timeout": self.config.timeout_s,
            "num_retries": 0,
            "stream": stream,
            **params,
        }
        call.ledger.added_to_prompt(target.system_prompt)
        if call.endpoint == "chat":
            request = litellm.acompletion(messages=data["messages"], **common)
        else:
            request = litellm.atext_completion(prompt=data["prompt"], **common)
        return await _opened(
            call, target, request, stream, lambda r: r.model_dump_json(exclude_none=True).encode(), LiteLLMStream
        )

    def _common(self, target: Target, stream: bool) -> dict[str, Any]:
        return {
            "model": target.name,
            "custom_llm_provider": "openai",
            "api_base": self.config.api_base,
            "api_key": self.api_key() or "none",
            "timeout": self.config.timeout_s,
            "num_retries": 0,
            "stream": stream,
        }

    async def _open_responses(self, target: Target, call: Call) -> Opened:
        litellm = self._litellm()
        create = getattr(litellm, "aresponses", None)
        if create is None:
            raise UnsupportedEndpoint("the installed litellm has no Responses API support (1.63 and later have)")
        data = shape_data(call.data, call.endpoint, target, target.name)
        stream = bool(data.get("stream"))
        named = {k: v for k, v in data.items() if k in _RESPONSES_NAMED}
        extra = {k: v for k, v in data.items() if k not in _RESPONSES_NAMED and k not in ("model", "input", "stream")}
        call.ledger.added_to_prompt(target.system_prompt)
        request = create(input=data["input"], extra_body=extra or None, **named, **self._common(target, stream))
        return await _opened(call, target, request, stream, lambda r: orjson.dumps(_dumped(r)), LiteLLMResponseStream)


def _json(response: Any) -> bytes:
    return str(response.model_dump_json(exclude_none=True)).encode()


async def _opened(
    call: Call,
    target: Target,
    request: Coroutine[Any, Any, Any],
    stream: bool,
    whole: Callable[[Any], bytes],
    framing: Callable[[Any, AsyncIterator[Any]], Answer],
) -> Opened:
    """Send ``request`` through litellm: a whole answer as ``whole`` writes it, or a stream once its first
    chunk is in (so a failure before the first byte can still fall back), framed by ``framing``."""
    try:
        with call.ledger.sending():
            response = await request
            if not stream:
                return Opened(StaticAnswer(whole(response), "application/json"))
            iterator = aiter(response)
            first = await anext(iterator)
    except TurnoutError:
        raise
    except Exception as exc:  # litellm raises its own tree: see gateway.failures for what each kind means
        raise translate(exc, Boundary.OPENAI, repr(target.name)) from exc
    return Opened(framing(first, iterator))
