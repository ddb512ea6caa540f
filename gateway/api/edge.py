"""The connection's edge: uvicorn's httptools protocol with the bounds it lacks, and every refusal in the
OpenAI envelope.

uvicorn with httptools is what keeps the overhead benchmark at its goals, but it bounds neither the size of a
request's head nor the time a client takes to send it: an anonymous client could hold unfinished headers of
any size on any number of connections, or send a body one byte a minute, before an API key is ever read.
:class:`EdgeProtocol` adds, per connection and before any route or key check:

* the request target at most ``server.max_url_bytes`` (414), the request line and headers together at most
  ``server.max_header_bytes`` and ``server.max_headers`` lines (431): counted on the bytes as they arrive, so
  an unfinished head never holds more than that plus one read;
* a deadline for the head (``server.header_timeout_s``, from the connection or the request's first byte) and
  one for the body once the head is in (``server.body_timeout_s``): a slow client gets 408 and is closed. A
  response already under way (a stream) is never cut: the body's deadline ends when the body is whole;
* at most ``server.max_connections`` open connections: one more gets 503 with ``retry-after`` and is closed;
* the parser's refusals (a malformed request line or header, a bad ``Content-Length``, an unknown method) as
  the OpenAI envelope with their status instead of uvicorn's plain text.

Each refusal ends the connection (the rest of its bytes cannot be trusted): the answer is sent, the sending
side shut, and what still arrives dropped for a moment before closing, so the client reads the answer
instead of a reset. Refusals are counted by code in ``turnout_errors_total``. uvicorn's own settings are
used where they exist (keep-alive, graceful shutdown); this subclass only adds what it has no setting for.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import (
    ConnectionsExhausted,
    HeadersTooLarge,
    MethodNotImplemented,
    ProtocolRefused,
    RequestTimeout,
    UrlTooLong,
)

log = logging.getLogger("turnout.edge")

RETRY_AFTER_S = 1  # what a refused connection is told to wait
_START_BYTES = 32
LINGER_S = 2.0  # after a refusal: how long what the client still sends is read and dropped
LINGER_BYTES = 1 << 20  # ... and how much of it
_METHOD = re.compile(rb"[A-Z][A-Z_-]* ")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_url_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class Edge:
    """What every connection of one server shares: the limits, and the connections waiting for a head or a
    body, whose deadlines one task checks every ``tick`` seconds. (A timer per request would cost each
    request three timer operations on the hot path; a deadline here costs it a float stored.)"""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.tick = min(1.0, max(0.05, min(limits.header_timeout_s, limits.body_timeout_s) / 4))
        self._open: set[EdgeProtocol] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def opened(self, connection: EdgeProtocol) -> None:
        self._open.add(connection)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = connection.loop.create_task(self._sweep(connection.loop), name="edge-deadlines")

    def closed(self, connection: EdgeProtocol) -> None:
        self._open.discard(connection)

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._open:  # ends with the last connection; the next one starts it again
            await asyncio.sleep(self.tick)
            now = loop.time()
            for connection in [c for c in self._open if c.deadline is not None and c.deadline <= now]:
                connection.expired()


class _Stop(Exception):
    """Raised in a parser callback to stop parsing a refused request at once."""


class EdgeProtocol(HttpToolsProtocol):
    """One client connection (see the module's docstring). Built by uvicorn with its usual arguments and
    the ``limits`` bound in (``functools.partial``)."""

    def __init__(self, *args: Any, edge: Edge, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = edge
        self._limits = edge.limits
        self._head_bytes = 0  # bytes received while waiting for the current request's head to end
        self._in_head = True  # from the connection's start, or the last request's end, to a head's end
        self._refusal: ProtocolRefused | None = None
        self._ended = 0  # requests whose bytes ended on this connection
        self._dropped = 0  # bytes read and dropped after a refusal
        self._start = b""  # the current head's first bytes, to tell an unknown method from bytes that are not HTTP
        self.deadline: float | None = None  # when the head or body awaited must be in (the loop's clock)
        self._awaiting = "headers"
        # Read on every request, so kept at hand (the hot path's callbacks below set deadlines inline):
        self._clock = self.loop.time
        self._header_s = self._limits.header_timeout_s
        self._body_s = self._limits.body_timeout_s

    # The connection.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        crowded = len(self.connections) >= self._limits.max_connections
        super().connection_made(transport)
        self._edge.opened(self)
        if crowded:
            refusal = ConnectionsExhausted(
                f"The gateway has {self._limits.max_connections} connections open (server.max_connections); "
                "retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
            self._refuse(refusal)
            return
        self._arm(self._limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._edge.closed(self)
        self.deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's own, with the head's bytes counted and the parser's refusals kept with their reason."""
        if self._refusal is not None:
            self._dropped += len(data)  # refused: what still arrives is dropped while the answer leaves
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            if not self._head_bytes:
                self._start = data[:_START_BYTES]
            self._head_bytes += len(data)
        ended = self._ended
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            # after a request that ended within these bytes, the error is not in the head that _start began
            self._refuse(self._refusal or _parser_refusal(exc, self._start if self._ended == ended else b""))
            return
        if self._in_head and self._head_bytes > self._limits.max_url_bytes + self._limits.max_header_bytes:
            self._refuse(self._headers_too_large())

    # Parser callbacks.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # a request on a kept-alive connection: its head's time starts now
            self.deadline, self._awaiting = self._clock() + self._header_s, "headers"

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._limits.max_url_bytes:
            self._refusal = UrlTooLong(
                f"The request target is longer than {self._limits.max_url_bytes} bytes (server.max_url_bytes)"
            )
            raise _Stop

    def on_headers_complete(self) -> None:
        # Header lines are counted here, not as each arrives (a call per header on every request): until the
        # head ends, the byte cap bounds them.
        if len(self.headers) > self._limits.max_headers:
            self._refusal = self._headers_too_large()
            raise _Stop
        self._in_head = False
        self.deadline, self._awaiting = self._clock() + self._body_s, "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.deadline = None
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head
        self._ended += 1
        super().on_message_complete()

    # Refusals.
    def send_400_response(self, msg: str) -> None:
        """Where uvicorn would answer in plain text (only its own ``data_received``, replaced above)."""
        self._refuse(ProtocolRefused(f"The request is not valid HTTP/1.1 ({msg})"))

    def _headers_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"The request's headers exceed {self._limits.max_header_bytes} bytes or {self._limits.max_headers} "
            "lines (server.max_header_bytes, server.max_headers)"
        )

    def _refuse(self, refusal: ProtocolRefused) -> None:
        self._refusal = refusal
        self._disarm()
        if self.transport.is_closing():
            return
        self._count(refusal.code or "invalid_http_request")
        log.debug("refused %s: %s", self.client, refusal.message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the route (if one started) writes nothing more
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()  # too late for an answer: only closing is left
                return
        body = refusal.body()
        status = STATUS_LINE.get(refusal.status) or f"HTTP/1.1 {refusal.status} Refused\r\n".encode()
        head = [status]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for key, text in refusal.headers.items():
            head += [key.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode("ascii"),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self._linger()

    def _linger(self) -> None:
        """Close after the answer without losing it: closing a socket that still has unread bytes makes the
        kernel reset the connection, and the client may never read the answer. So the sending side is shut,
        and what still arrives is read and dropped for at most ``LINGER_S`` or ``LINGER_BYTES``; the client
        closes first as a rule."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._arm(LINGER_S, "linger")

    def _count(self, code: str) -> None:
        components = self.app_state.get("components")
        if components is not None:
            components.metrics.errors.labels(code).inc()

    # Deadlines.
    def _arm(self, seconds: float, what: str) -> None:
        self.deadline = self.loop.time() + seconds
        self._awaiting = what

    def _disarm(self) -> None:
        self.deadline = None

    def expired(self) -> None:
        """Its deadline passed (told by :class:`Edge`'s sweep)."""
        what = self._awaiting
        self.deadline = None
        if self.transport.is_closing():
            return
        if what == "linger":
            self.transport.close()
            return
        if what == "headers" and self._head_bytes == 0 and self.cycle is None:
            # a connection that never sent a byte: nobody to answer, only a socket to free
            self._count("idle_connection_closed")
            self.transport.close()
            return
        seconds = self._limits.header_timeout_s if what == "headers" else self._limits.body_timeout_s
        setting = "server.header_timeout_s" if what == "headers" else "server.body_timeout_s"
        self._refuse(RequestTimeout(f"The request's {what} did not arrive within {seconds:g} s ({setting})"))


def _parser_refusal(exc: httptools.HttpParserError, start: bytes) -> ProtocolRefused:
    reason = str(exc).strip() or type(exc).__name__
    if "method" in reason.lower() and _METHOD.match(start):  # a word where the method goes: one HTTP lacks
        return MethodNotImplemented(f"The request method is not one HTTP defines ({reason}); the API uses GET and POST")
    return ProtocolRefused(f"The request is not valid HTTP/1.1 ({reason}); the connection is closed")


__all__ = ["Edge", "EdgeLimits", "EdgeProtocol"]
