"""A stream's SSE events on their way to the client: timed, accounted, and closed with Turnout's event.

Events are passed through as the upstream wrote them (re-split on blank lines, since one upstream write
may hold several events or half of one, but never re-serialised), with three exceptions at the end:

- the upstream's usage event (the gateway always asks for one) reaches the client only if the client
  asked for usage (``stream_options.include_usage``), and then unchanged apart from Turnout's fields;
- one last event before ``data: [DONE]`` carries ``turnout.cost_usd`` (and ``citations`` on RAG
  routes). It has no choices, like the usage event, so the ``openai`` client reads it as a chunk and
  keeps the extra fields. When the client asked for usage, this is the usage event itself;
- when the upstream sent no usage, the figures are counted here, marked ``turnout.estimated``, and
  given to a client that asked for usage in that same last event.

The time spent waiting for each upstream chunk is the upstream's, not the gateway's (see the ledger).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from gateway.accounting.ledger import Ledger
from gateway.errors import TurnoutError, UpstreamError
from gateway.failures import Boundary, translate
from gateway.protocol import sse
from gateway.protocol.usage import usage_of

_USAGE = b'"usage"'
_UPSTREAM_ERROR = sse.DATA + b'{"error"'
# an event that carries generated text (the first chat chunk only announces the role, with empty content)
_GENERATED = re.compile(rb'"(?:content|text|reasoning_content)":\s*"[^"]|"tool_calls":\s*\[\s*\{')


async def accounted_events(
    chunks: AsyncIterator[bytes], ledger: Ledger, citations: list[dict[str, Any]] | None
) -> AsyncGenerator[bytes, None]:
    """The stream's events, accounted as they pass. A failure after the first byte cannot change the
    response's status any more: the stream ends with an error event instead (the OpenAI envelope, which
    the ``openai`` client raises), and the ledger records the failure (see ``Ledger.stream_failed``)."""
    iterator = aiter(chunks)
    buffer = b""
    meta: dict[str, Any] | None = None
    held: dict[str, Any] | None = None  # the upstream's usage event (no choices), parsed
    end, data, done, clock = sse.END, sse.DATA, sse.DONE, time.perf_counter
    try:
        while True:
            waited = clock()
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                ledger.waited_upstream(clock() - waited)
                break
            ledger.waited_upstream(clock() - waited)
            buffer = buffer + chunk if buffer else chunk
            while (cut := buffer.find(end)) >= 0:
                event, buffer = buffer[:cut], buffer[cut + 2 :]
                if not event.startswith(data):
                    yield event + end  # comments, retry hints: not ours to judge
                    continue
                if event.startswith(done) and sse.is_done(event):
                    if ledger.stream_error is not None:  # recorded now: the client may leave once it has [DONE]
                        ledger.stream_failed(ledger.stream_error)
                    yield _closing_event(ledger, meta, held, citations)
                    yield event + end
                    continue
                if meta is None:
                    meta = _event_meta(event)
                if (
                    _USAGE in event
                    and (body := sse.parsed(event)) is not None
                    and (usage := usage_of(body)) is not None
                ):
                    # the last figures count: with continuous usage stats every chunk carries running totals
                    ledger.saw_usage(usage)
                    if not body.get("choices"):
                        held = body  # said in the closing event instead
                        continue
                    if not ledger.wants_usage:
                        event = data + orjson.dumps({k: v for k, v in body.items() if k != "usage"})
                if event.startswith(_UPSTREAM_ERROR):
                    ledger.saw_stream_error(_upstream_error(event))
                ledger.keep_event(event)
                if ledger.first_token_at is None and _GENERATED.search(event):
                    ledger.saw_first_token()
                yield event + end
    except Exception as exc:  # any backend's failure mid-stream (aiohttp, litellm) is told the same way
        # Only whole events were passed on (a partial one is yielded only once the upstream ended), so
        # the error event starts on an event boundary.
        error = translate(exc, Boundary.STREAM, "the upstream")
        ledger.stream_failed(error)
        yield sse.error_event(error)
        return
    if buffer:
        yield buffer
    if ledger.stream_error is not None and ledger.stream_failure is None:  # said in-band, with no [DONE]
        ledger.stream_failed(ledger.stream_error)


def _closing_event(
    ledger: Ledger, meta: dict[str, Any] | None, held: dict[str, Any] | None, citations: list[dict[str, Any]] | None
) -> bytes:
    cost = ledger.settle(ledger.usage)
    usage = ledger.usage
    event: dict[str, Any]
    if ledger.wants_usage and held is not None:
        event = held
    else:
        event = {
            "id": f"turnout-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if ledger.endpoint == "chat" else "text_completion",
            "created": int(time.time()),
            "model": "",
            **(meta or {}),
            "choices": [],
        }
        if ledger.wants_usage and usage is not None and usage.estimated:
            event["usage"] = usage.as_openai()
    if citations is not None:
        event["citations"] = citations
    event["turnout"] = {"cost_usd": cost, "estimated": bool(usage is not None and usage.estimated)}
    return sse.json_event(event)


def _upstream_error(event: bytes) -> TurnoutError:
    """The upstream's own in-band error event (vLLM sends one when generation fails mid-stream)."""
    body = sse.parsed(event)
    error = body.get("error") if body is not None else None
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamError(f"the upstream reported an error mid-stream: {str(message or 'no details')[:300]}")


def _event_meta(event: bytes) -> dict[str, Any] | None:
    body = sse.parsed(event)
    if body is None:
        return None
    return {k: body[k] for k in ("id", "object", "created", "model") if k in body}


__all__ = ["accounted_events"]
