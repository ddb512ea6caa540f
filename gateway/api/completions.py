"""``POST /v1/chat/completions`` and ``POST /v1/completions``: the hot path, as a plain ASGI app.

These two endpoints are what the gateway exists for, and every microsecond spent on them is added to
every request. They sit in front of FastAPI instead of behind it: profiled under load, FastAPI's
dependency resolution, its middleware layers and Starlette's request object cost more per request than
the gateway's own routing, accounting and upstream call together. Here the same steps are written out
once: request id, API key, body (bounded), the completion service, and the OpenAI error envelope for
every failure. Every other path goes to the FastAPI app unchanged.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.body import read_body
from gateway.api.errors import render
from gateway.api.middleware import IdSender, RequestIds
from gateway.components import Components
from gateway.dispatch.service import RequestContext
from gateway.errors import MethodNotAllowed, TurnoutError
from gateway.metrics import NO_POLICY, NO_ROUTE

log = logging.getLogger("turnout.errors")

_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class CompletionLane:
    """Serves the completion endpoints itself and passes every other request to ``api``."""

    def __init__(self, api: FastAPI, ids: RequestIds) -> None:
        self.api = api
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the paths with a trailing slash too, which FastAPI would have redirected
        endpoint = _ENDPOINTS.get(scope["path"].rstrip("/")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.api(scope, receive, send)
            return
        arrived = time.perf_counter()
        request_id = self.ids.of(scope)
        sender = IdSender(send, request_id)
        try:
            response = await self._respond(endpoint, scope, receive, request_id.decode(), arrived)
            await response(scope, receive, sender)
        except Exception as exc:
            await sender.bug(exc)

    async def _respond(
        self, endpoint: str, scope: Scope, receive: Receive, request_id: str, arrived: float
    ) -> Response:
        components: Components = self.api.state.components
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
            who = components.auth.identify(headers.get("authorization"))
            body = await read_body(receive, headers.get("content-length"), components.config.server.max_body_bytes)
            ctx = RequestContext(request_id, who.tenant, headers, arrived)
            return await components.service.complete("chat" if endpoint == "chat" else "completions", body, ctx)
        except TurnoutError as exc:
            if not exc.counted:  # refused before the service opened a ledger (key, size, method)
                refused = components.metrics.route(endpoint, NO_POLICY, NO_ROUTE, NO_ROUTE)
                refused.requests(exc.status).inc()
            components.accounting.count_error(exc)  # once: the request's ledger may have counted it already
            if exc.status >= 500:
                log.warning("POST %s -> %d %s: %s", scope["path"], exc.status, exc.code, exc.message)
            return render(exc)
