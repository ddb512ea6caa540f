"""A Responses API stream's events on their way to the client: timed, accounted, and the last one costed.

Events pass through as the upstream wrote them (re-split on blank lines, since one upstream write may hold
several events or half of one, but never re-serialised), with one exception: the terminal event
(``response.completed``, or ``response.incomplete`` / ``response.failed``) carries Turnout's fields on its
``response`` object, where the ``openai`` client keeps them (``event.response.model_extra``, and the final
response of its stream helpers):

- ``turnout``: ``{"cost_usd": ..., "estimated": ...}``, the request's price, as a chat stream's closing
  event carries it;
- ``citations`` on RAG routes;
- when the upstream reported no usage, the figures counted here, in the Responses shape, in ``usage``
  (and ``estimated`` says so).

Nothing follows the terminal event: the Responses API has no ``[DONE]``, and the ``openai`` client's stream
helpers expect the terminal event last. Only the events that carry generated text (``*.delta``) are kept
for an estimate; the others repeat the request and the whole answer.

A failure after the first byte ends the stream with the Responses API's ``error`` event, which also carries
the OpenAI envelope's ``error`` object so the ``openai`` client raises it (see
:func:`gateway.protocol.responses.error_event`).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from gateway.accounting.ledger import Ledger
from gateway.errors import UpstreamError
from gateway.failures import Boundary, translate
from gateway.protocol import responses
from gateway.protocol.usage import usage_of

_ERROR_EVENT = responses.EVENT + b"error"
# a delta with something in it (the first event with text is the time to first token)
_GENERATED = re.compile(rb'"delta":\s*"[^"]')


async def accounted_response_events(
    chunks: AsyncIterator[bytes], ledger: Ledger, citations: list[dict[str, Any]] | None
) -> AsyncGenerator[bytes, None]:
    """The stream's events, accounted as they pass (see the module's docstring)."""
    iterator = aiter(chunks)
    buffer = b""
    passed = 0  # events passed on: the sequence number of an error event the gateway adds
    end, clock = responses.END, time.perf_counter
    named, deltas, terminals = responses.EVENT, responses.DELTA_EVENTS, responses.TERMINAL_EVENTS
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
                passed += 1
                if event.startswith(deltas):
                    _generated(event, ledger)
                    yield event + end
                elif event.startswith(named) and not event.startswith(terminals) and not event.startswith(_ERROR_EVENT):
                    yield event + end  # the lifecycle and item events: passed as they are
                else:
                    yield _judged(event, ledger, citations) + end
    except Exception as exc:  # any backend's failure mid-stream (aiohttp, litellm) is told the same way
        error = translate(exc, Boundary.STREAM, "the upstream")
        ledger.stream_failed(error)
        yield responses.error_event(error, passed)
        return
    if buffer:
        yield buffer
    if ledger.stream_error is not None and ledger.stream_failure is None:  # said in-band, and not closed
        ledger.stream_failed(ledger.stream_error)


def _generated(event: bytes, ledger: Ledger) -> None:
    ledger.keep_event(event)
    if ledger.first_token_at is None and _GENERATED.search(event):
        ledger.saw_first_token()


def _judged(event: bytes, ledger: Ledger, citations: list[dict[str, Any]] | None) -> bytes:
    """An event that needs reading: a terminal event, an error, or one without an ``event:`` line."""
    kind, body = responses.parsed(event)
    if kind in responses.DELTA_TYPES:
        _generated(event, ledger)
        return event
    said = responses.upstream_error_message(kind, body)
    if said is not None:
        ledger.saw_stream_error(UpstreamError(f"the upstream reported an error mid-stream: {said[:300]}"))
    if kind not in responses.TERMINAL_TYPES or body is None or not isinstance(body.get("response"), dict):
        return event
    if ledger.stream_error is not None:  # recorded now: the client may leave once it has the last event
        ledger.stream_failed(ledger.stream_error)
    response: dict[str, Any] = body["response"]
    reported = usage_of(response)
    if reported is not None:
        ledger.saw_usage(reported)
    cost = ledger.settle(ledger.usage)
    usage = ledger.usage
    if reported is None and usage is not None:
        response["usage"] = usage.as_responses()
    if citations is not None:
        response["citations"] = citations
    response["turnout"] = {"cost_usd": cost, "estimated": bool(usage is not None and usage.estimated)}
    return responses.event(kind, body)[: -len(responses.END)]


__all__ = ["accounted_response_events"]
