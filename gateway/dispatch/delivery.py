"""What the completion service hands the HTTP layer: a routed request, then its opened answer, as plain data.

:class:`Completion` is a request the service has parsed, routed and opened a ledger for; ``open()``
carries the decision out (targets in order, fallbacks before the first byte) and gives a
:class:`Delivery`: the answer's status, headers and bytes, whole (``body()``) or as SSE events
(``events()``), accounted as they pass. Nothing here knows about sockets, ASGI or disconnects: the HTTP
layer (:mod:`gateway.api.responses`) decides when to open, sends the bytes, watches the client, and
tells the ledger how the request ended.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.accounting.ledger import Ledger, dollars
from gateway.dispatch.answers import with_citations
from gateway.dispatch.backend import Opened
from gateway.dispatch.events import accounted_events
from gateway.dispatch.response_events import accounted_response_events
from gateway.errors import TurnoutError
from gateway.protocol import responses, sse
from gateway.protocol.requests import Endpoint
from gateway.protocol.usage import usage_of_body
from routing import Target

if TYPE_CHECKING:
    from gateway.dispatch.shadow_request import ShadowRequest

Opener = Callable[[], Awaitable[tuple[Opened, dict[str, str]]]]


class Completion:
    """A routed completion request whose answer is not open yet."""

    __slots__ = ("_opener", "endpoint", "headers", "ledger", "shadowed", "stream", "targets")

    def __init__(
        self, endpoint: Endpoint, stream: bool, ledger: Ledger, opener: Opener, targets: tuple[Target, ...] = ()
    ) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.ledger = ledger
        self._opener = opener
        self.targets = targets  # the decision's chain: the targets the answer may come from
        self.headers: dict[str, str] | None = None  # added to the answer's (the quotas' rate-limit headers)
        self.shadowed: ShadowRequest | None = None  # sampled for shadow arms: run once the answer is sent

    async def open(self) -> Delivery:
        """Open the answer, falling back as the decision says. A failure is recorded in the ledger (with
        what was spent) and raised, for the HTTP layer to answer with the error envelope."""
        try:
            opened, headers = await self._opener()
        except TurnoutError as exc:
            if self.headers:
                exc.add_headers(self.headers)
            self.ledger.fail(exc)
            raise
        if self.headers:
            headers.update(self.headers)
        return Delivery(opened, headers, self.ledger, self.stream)


class Delivery:
    """An opened answer: ``status``, ``content_type`` and ``headers`` for the response, then its bytes.

    ``status`` is the request's status as the metrics see it: a stream that fails after its first byte
    keeps the 200 it was sent with, but is recorded with its error's status (``error``). ``last_events``
    are the starts of the events after which a stream's client has its whole answer (``data: [DONE]``; a
    Responses stream's terminal events), and may hang up."""

    __slots__ = ("_endpoint", "_ledger", "_opened", "_status", "content_type", "headers", "last_events")

    def __init__(self, opened: Opened, headers: dict[str, str], ledger: Ledger, stream: bool) -> None:
        self._opened = opened
        self._ledger = ledger
        self._endpoint = ledger.endpoint
        self.headers = headers
        self._status = opened.response.status
        self.content_type = opened.response.content_type
        self.last_events = responses.TERMINAL_EVENTS if self._endpoint == "responses" else (sse.DONE,)
        if stream:  # a stream's headers leave now: what the gateway took so far is its overhead
            headers["x-turnout-overhead-ms"] = _milliseconds(ledger.overhead_s())

    @property
    def error(self) -> TurnoutError | None:
        """What a stream failed with after its first byte (in-band from the upstream, or broken off)."""
        return self._ledger.stream_failure

    @property
    def status(self) -> int:
        failure = self._ledger.stream_failure
        return self._status if failure is None else failure.status

    async def body(self) -> bytes:
        """The whole answer of a non-streaming request: read, costed (``x-turnout-cost-usd``), with its
        citations added; a failure to read it is raised (nothing has been sent yet)."""
        ledger, headers = self._ledger, self.headers
        try:
            with ledger.waiting_upstream():
                body = await self._opened.response.read()
        except TurnoutError as exc:
            ledger.fail(exc)
            exc.add_headers(headers)
            raise
        usage = usage_of_body(body)
        if usage is None or ledger.keeps_answer:
            ledger.keep_event(body)  # counted with the tokenizer instead (or compared with shadow answers)
        headers["x-turnout-cost-usd"] = dollars(ledger.settle(usage))
        if ledger.usage is not None and ledger.usage.estimated:
            headers["x-turnout-usage-estimated"] = "true"
        if self._opened.citations is not None:
            body = with_citations(body, self._endpoint, self._opened.citations)
        headers["x-turnout-overhead-ms"] = _milliseconds(ledger.overhead_s())
        return body

    def events(self) -> AsyncGenerator[bytes, None]:
        """A stream's events as they arrive, accounted (see :mod:`gateway.dispatch.events`); a failure
        after the first byte ends it with an error event, and is kept in ``error``."""
        opened = self._opened
        if self._endpoint == "responses":
            return accounted_response_events(opened.response.chunks(), self._ledger, opened.citations)
        return accounted_events(opened.response.chunks(), self._ledger, opened.citations)

    def close(self) -> None:
        """Release what the backend holds for the answer (the connection, an adapter lease); once."""
        self._opened.close()


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


__all__ = ["Completion", "Delivery", "Opener"]
