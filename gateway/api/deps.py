"""Typed accessors for what the lifespan built; routers depend on these, never on globals.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, which costs
more than the dependency itself on every request."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from gateway.api.body import read_body
from gateway.auth import Identity
from gateway.components import Components
from gateway.dispatch.service import RequestContext


async def components(request: Request) -> Components:
    return cast(Components, request.app.state.components)


async def identity(request: Request, parts: Annotated[Components, Depends(components)]) -> Identity:
    return parts.auth.identify(request.headers.get("authorization"))


async def admin_identity(who: Annotated[Identity, Depends(identity)]) -> Identity:
    from gateway.auth import Authenticator

    Authenticator.require_admin(who)
    return who


async def request_context(request: Request, who: Annotated[Identity, Depends(identity)]) -> RequestContext:
    state = request.scope["state"]
    return RequestContext(state["request_id"], who.tenant, request.headers, state["arrived"])


async def request_body(request: Request, parts: Annotated[Components, Depends(components)]) -> bytes:
    """The body, refused with 413 as soon as it passes the configured size (never read whole first)."""
    return await read_body(request.receive, request.headers.get("content-length"), parts.config.server.max_body_bytes)


ComponentsDep = Annotated[Components, Depends(components)]
IdentityDep = Annotated[Identity, Depends(identity)]
AdminDep = Annotated[Identity, Depends(admin_identity)]
ContextDep = Annotated[RequestContext, Depends(request_context)]
BodyDep = Annotated[bytes, Depends(request_body)]
