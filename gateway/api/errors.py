"""Renders every deliberate failure as the OpenAI error envelope, never as a traceback.

Bugs (any other exception) are answered by :class:`gateway.api.middleware.RequestIdMiddleware`, which
sits inside Starlette's own error handler and so can add the request id to the envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import InvalidRequest, MethodNotAllowed, RouteNotFound, TurnoutError

log = logging.getLogger("turnout.errors")


def render(exc: TurnoutError) -> Response:
    return Response(exc.body(), exc.status, exc.headers or None, "application/json")


async def _turnout_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TurnoutError)
    components = getattr(request.app.state, "components", None)
    if components is not None:
        components.accounting.count_error(exc)  # once: a request's ledger may have counted it already
    if exc.status >= 500:
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return render(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render(RouteNotFound(f"no such endpoint: {request.method} {request.url.path}"))
    if exc.status_code == 405:
        return render(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    error = InvalidRequest(str(exc.detail))
    error.status = exc.status_code  # type: ignore[misc]
    return render(error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return render(InvalidRequest(f"{param or 'request'}: {first.get('msg')}", param=param))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TurnoutError, _turnout_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
