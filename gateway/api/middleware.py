"""Request ids on every response, as a plain ASGI middleware (no per-request task or body copy).

An ``x-request-id`` the client sends is kept when it is short and printable, so one id follows a
request through the caller's logs and ours; otherwise a new one is made: a random prefix per process
and a counter (unique across replicas, and a fraction of the cost of a uuid4 per request).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import TurnoutError

log = logging.getLogger("turnout.errors")

_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIds:
    """Reads the client's request id from the ASGI scope, or makes a new one."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def of(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _ACCEPTABLE.match(value):
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

    async def bug(self, exc: Exception) -> None:
        """A bug, never a deliberate error: log it with its traceback and answer the OpenAI envelope (with
        the request id to quote) instead of a bare 500 page; re-raise if the response had started."""
        request_id = self.request_id.decode()
        log.error("unexpected error on request %s", request_id, exc_info=exc)
        if self.started:
            raise exc
        body = TurnoutError(f"internal error; quote request id {request_id} when reporting it").body()
        await self({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
        await self({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()  # the start of the gateway's own time on this request
        request_id = self.ids.of(scope)
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = request_id.decode(), arrived
        sender = IdSender(send, request_id)
        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            await sender.bug(exc)
