"""Request ids on every response, as a plain ASGI middleware (no per-request task or body copy).

An ``x-request-id`` the client sends is kept when it is short and printable, so one id follows a
request through the caller's logs and ours; otherwise a new one is made.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import TurnoutError

log = logging.getLogger("turnout.errors")

_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()  # the start of the gateway's own time on this request
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _ACCEPTABLE.match(value):
                    request_id = value
                break
        if not request_id:
            request_id = uuid.uuid4().hex.encode()
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = request_id.decode(), arrived

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # A bug, never a deliberate error: log it with its traceback, answer the envelope (with the
            # request id to quote) instead of a bare 500 page.
            log.error("unexpected error on request %s", request_id.decode(), exc_info=exc)
            if started:
                raise
            body = TurnoutError(f"internal error; quote request id {request_id.decode()} when reporting it").body()
            await send_with_id(
                {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
            )
            await send_with_id({"type": "http.response.body", "body": body})
