"""The one pipeline every HTTP request goes through: admitted on the way in, and failed in one way.

**Admit.** Every request gets a request id (the client's own ``x-request-id`` when it is short and
printable, so one id follows a request through the caller's logs and ours; else a new one) and its
arrival time (:class:`gateway.api.middleware.RequestIdMiddleware`, for every route); then, where the
route needs them, the caller's identity from its API key (:func:`identify`), the body read within
``server.max_body_bytes`` (:func:`read_body`), and the context routing sees (:func:`context`).

**Fail.** Every :class:`gateway.errors.TurnoutError` a route raises before its response starts reaches
:func:`fail` (through the app's exception handler, :mod:`gateway.api.errors`): it is counted once in
``turnout_errors_total`` (and, on a completion path, refused before routing, in ``turnout_requests_total``
under ``policy="none"``), logged when it is the server's side that failed (5xx), and rendered as the
OpenAI envelope by :func:`render`, the only place an error becomes a response. A failure after a
stream's first byte is told in-band instead, and logged by :func:`report` in the same words. Bugs (any
other exception) are answered by the middleware with the same envelope and the request id to quote.

The completion endpoints and the FastAPI routes use exactly these functions: the completion endpoints
as plain ASGI routes (:mod:`gateway.api.completions`), the others through typed dependencies
(:mod:`gateway.api.deps`).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope

from gateway.auth import Identity
from gateway.components import Components
from gateway.dispatch.service import RequestContext
from gateway.errors import ClientLeft, RequestTooLarge, TurnoutError
from gateway.metrics import NO_POLICY, NO_ROUTE
from gateway.protocol.requests import ENDPOINTS

log = logging.getLogger("turnout.errors")

_ACCEPTABLE_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


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


# --- admit ----------------------------------------------------------------------------------------------


def admit(scope: Scope, ids: RequestIds) -> bytes:
    """Give the request its id and arrival time (kept in the scope's state for the route); the id."""
    arrived = time.perf_counter()  # the start of the gateway's own time on this request
    request_id = ids.of(scope)
    state = scope.setdefault("state", {})
    state["request_id"], state["arrived"] = request_id.decode(), arrived
    return request_id


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


def fail(components: Components | None, exc: TurnoutError, method: str, path: str) -> Response:
    """Count ``exc`` (once), log it if the server's side failed, and render it as the envelope."""
    if components is not None:
        if not exc.counted:  # no ledger recorded it: refused before routing (key, size, method, body)
            endpoint = ENDPOINTS.get(path.rstrip("/"))
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


def render(exc: TurnoutError) -> Response:
    """The error as an HTTP response: its status, its headers, the OpenAI envelope as the body."""
    return Response(exc.body(), exc.status, exc.headers or None, "application/json")


__all__ = ["RequestIds", "admit", "context", "fail", "identify", "read_body", "render", "report"]
