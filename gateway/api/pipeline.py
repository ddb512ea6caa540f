"""The one pipeline every HTTP request goes through: admitted on the way in, and failed in one way.

**Admit.** Every request gets a request id (the client's own ``x-request-id`` when it is short and
printable, so one id follows a request through the caller's logs and ours; else a new one), its arrival
time, and a ``send`` that puts the id on the response (:func:`admit`); then, where the route needs them,
the caller's identity from its API key (:func:`identify`), the body read within
``server.max_body_bytes`` (:func:`read_body`), and the context routing sees (:func:`context`).

**Fail.** Every :class:`gateway.errors.TurnoutError` a route raises before its response starts reaches
:func:`fail`: it is counted once in ``turnout_errors_total`` (and, on a completion path, refused before
routing, in ``turnout_requests_total`` under ``policy="none"``), logged when it is the server's side that
failed (5xx), and rendered as the OpenAI envelope by :func:`render`, the only place an error becomes a
response. A failure after a stream's first byte is told in-band instead, and logged by :func:`report` in
the same words. A bug (any other exception) is logged with its traceback and answered by :func:`bug`
with the same envelope and the request id to quote.

The completion endpoints (:mod:`gateway.api.completions`) call these functions themselves; the FastAPI
routes reach them through the request-id middleware (:mod:`gateway.api.middleware`), typed dependencies
(:mod:`gateway.api.deps`) and the app's exception handlers (:mod:`gateway.api.errors`).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Identity
from gateway.components import Components
from gateway.dispatch.service import RequestContext
from gateway.errors import ClientLeft, RequestTooLarge, TurnoutError
from gateway.metrics import NO_POLICY, NO_ROUTE
from gateway.protocol import embeddings
from gateway.protocol.requests import ENDPOINTS

log = logging.getLogger("turnout.errors")

_ACCEPTABLE_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")
# Endpoints besides the completions whose refusals before their service runs (key, size) are counted in
# turnout_requests_total, by path.
COUNTED_ENDPOINTS = {embeddings.PATH: embeddings.ENDPOINT}


class RequestIds:
    """Reads the client's request id from the ASGI scope, or makes a new one: a random prefix per process
    and a counter (unique across replicas, and a fraction of the cost of a uuid4 per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def of(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _ACCEPTABLE_ID.match(value):
                    return bytes(value)
                break
        return f"{self._prefix}{next(self._counter):08x}".encode()


class IdSender:
    """An ASGI ``send`` that adds ``x-request-id`` to the response and remembers whether it has started."""

    __slots__ = ("request_id", "send", "started")

    def __init__(self, send: Send, request_id: bytes) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message["headers"] = [*message.get("headers", ()), (b"x-request-id", self.request_id)]
        await self.send(message)


# --- admit ----------------------------------------------------------------------------------------------


def components_of(scope: Scope) -> Components | None:
    """What the lifespan built: the server copies the lifespan's state into every request's scope (None
    only for a request served before start-up finished, or after shutdown)."""
    state: dict[str, Components] | None = scope.get("state")
    return state.get("components") if state is not None else None


def admit(scope: Scope, send: Send, ids: RequestIds) -> IdSender:
    """Give the request its id and arrival time (kept in the scope's state for the route); the ``send``
    to answer it with."""
    arrived = time.perf_counter()  # the start of the gateway's own time on this request
    request_id = ids.of(scope)
    state = scope.setdefault("state", {})
    state["request_id"], state["arrived"] = request_id.decode(), arrived
    return IdSender(send, request_id)


def identify(components: Components, authorization: str | None) -> Identity:
    """The caller, by its API key (:class:`gateway.errors.Unauthenticated` when keys are configured and
    the request has none, or an unknown one)."""
    return components.auth.identify(authorization)


async def read_body(components: Components, receive: Receive, declared: str | None) -> bytes:
    """The request body, refused with 413 as soon as it passes ``server.max_body_bytes`` (never read whole
    first); ``declared`` is the Content-Length header, when sent."""
    limit = components.config.server.max_body_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def context(scope: Scope, who: Identity, headers: Mapping[str, str]) -> RequestContext:
    """What the completion service (and routing) knows of the request besides its body."""
    state = scope["state"]
    return RequestContext(state["request_id"], who.tenant, headers, state["arrived"])


# --- fail -----------------------------------------------------------------------------------------------


def fail(components: Components | None, exc: TurnoutError, method: str, path: str, *, counted: bool = True) -> Response:
    """Count ``exc`` (once), log it if the server's side failed, and render it as the envelope.

    ``counted=False`` for what the web framework refuses before any route of ours runs (an unknown URL or
    method, a malformed query parameter): answered the same way, but kept out of the error metrics, which
    count the gateway's own refusals and failures (scanners would otherwise fill them)."""
    if components is not None and counted:
        if not exc.counted:  # no ledger recorded it: refused before routing (key, size, method, body)
            endpoint = ENDPOINTS.get(path.removesuffix("/")) or COUNTED_ENDPOINTS.get(path)
            if endpoint is not None:
                components.metrics.route(endpoint, NO_POLICY, NO_ROUTE, NO_ROUTE).requests(exc.status).inc()
        components.accounting.count_error(exc)  # once: the request's ledger may have counted it already
    report(exc, method, path)
    return render(exc)


def report(exc: TurnoutError, method: str, path: str, *, in_stream: bool = False) -> None:
    """Log a failure of the server's side (5xx); the client's own mistakes are only counted."""
    if exc.status >= 500:
        where = " (in the stream)" if in_stream else ""
        log.warning("%s %s -> %d %s%s: %s", method, path, exc.status, exc.code, where, exc.message)


async def bug(exc: Exception, scope: Scope, receive: Receive, send: IdSender) -> None:
    """A bug, never a deliberate error: logged with its traceback, answered with the envelope and the
    request id to quote (unless the response had started: then re-raised, and the server drops the
    connection)."""
    request_id = send.request_id.decode()
    log.error("unexpected error on request %s", request_id, exc_info=exc)
    if send.started:
        raise exc
    await render(TurnoutError(f"internal error; quote request id {request_id} when reporting it"))(scope, receive, send)


def render(exc: TurnoutError) -> Response:
    """The error as an HTTP response: its status, its headers, the OpenAI envelope as the body."""
    return Response(exc.body(), exc.status, exc.headers or None, "application/json")


__all__ = [
    "IdSender",
    "RequestIds",
    "admit",
    "bug",
    "components_of",
    "context",
    "fail",
    "identify",
    "read_body",
    "render",
    "report",
]
