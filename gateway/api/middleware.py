"""The pipeline's first and last steps for the FastAPI routes, as a plain ASGI middleware (no per-request
task or body copy): every request is admitted (its id and arrival time), and a bug is answered with the
OpenAI envelope carrying the request id.

It sits inside Starlette's own error handler, so a bug is never answered with a bare 500 page. The
completion endpoints, which do not run behind it, call the same functions themselves.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.pipeline import RequestIds, admit, bug


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sender = admit(scope, send, self.ids)
        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            await bug(exc, scope, receive, sender)
