"""The app's exception handlers: every error a route raises before its response starts goes to the
pipeline's :func:`gateway.api.pipeline.fail` (counted, logged, rendered as the OpenAI envelope).

Starlette's and FastAPI's own exceptions (an unknown URL or method, a malformed query parameter) are
first turned into the error tree here, so that clients see one envelope whatever refused them; they are
not counted in the error metrics (see ``fail``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.api.pipeline import components_of, fail
from gateway.errors import InvalidRequest, MethodNotAllowed, RouteNotFound, TurnoutError


def _fail(request: Request, exc: TurnoutError, *, counted: bool = True) -> Response:
    return fail(components_of(request.scope), exc, request.method, request.url.path, counted=counted)


async def _turnout_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TurnoutError)
    return _fail(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return _fail(request, RouteNotFound(f"no such endpoint: {where}"), counted=False)
    if exc.status_code == 405:
        refused = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        return _fail(request, refused, counted=False)
    return _fail(request, InvalidRequest(str(exc.detail), status=exc.status_code), counted=False)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return _fail(request, InvalidRequest(f"{param or 'request'}: {first.get('msg')}", param=param), counted=False)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TurnoutError, _turnout_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
