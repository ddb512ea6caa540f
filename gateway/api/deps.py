"""Typed accessors for what the lifespan built; routers depend on these, never on globals."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from gateway.auth import Identity
from gateway.components import Components
from gateway.dispatch.service import RequestContext
from gateway.errors import InvalidRequest, RequestTooLarge


def components(request: Request) -> Components:
    return cast(Components, request.app.state.components)


def identity(request: Request, parts: Annotated[Components, Depends(components)]) -> Identity:
    return parts.auth.identify(request.headers.get("authorization"))


def admin_identity(who: Annotated[Identity, Depends(identity)]) -> Identity:
    from gateway.auth import Authenticator

    Authenticator.require_admin(who)
    return who


def request_context(request: Request, who: Annotated[Identity, Depends(identity)]) -> RequestContext:
    state = request.scope["state"]
    return RequestContext(state["request_id"], who.tenant, request.headers, state["arrived"])


async def request_body(request: Request, parts: Annotated[Components, Depends(components)]) -> bytes:
    """The body, refused with 413 as soon as it passes the configured size (never read whole first)."""
    limit = parts.config.server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"the request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest("the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


ComponentsDep = Annotated[Components, Depends(components)]
IdentityDep = Annotated[Identity, Depends(identity)]
AdminDep = Annotated[Identity, Depends(admin_identity)]
ContextDep = Annotated[RequestContext, Depends(request_context)]
BodyDep = Annotated[bytes, Depends(request_body)]
