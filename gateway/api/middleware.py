"""The first step of every request: its id and arrival time, and the envelope for bugs (a plain ASGI
middleware: no per-request task or body copy).

It sits inside Starlette's own error handler, so a bug is still answered with the OpenAI envelope, now
carrying the request id to quote, instead of a bare 500 page.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.pipeline import RequestIds, admit, render
from gateway.errors import TurnoutError

log = logging.getLogger("turnout.errors")


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


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sender = IdSender(send, admit(scope, self.ids))
        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            # A bug, never a deliberate error: logged with its traceback, answered with the envelope (unless
            # the response had started: then the connection is dropped, as the server does).
            request_id = sender.request_id.decode()
            log.error("unexpected error on request %s", request_id, exc_info=exc)
            if sender.started:
                raise
            bug = TurnoutError(f"internal error; quote request id {request_id} when reporting it")
            await render(bug)(scope, receive, sender)
