"""Typed accessors for what the lifespan built, and the pipeline's admit steps as FastAPI dependencies.

Routers depend on these, never on globals. Every dependency is ``async def``: FastAPI runs a plain ``def``
dependency in a thread pool, which costs more than the dependency itself on every request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api import pipeline
from gateway.auth import Identity
from gateway.components import Components
from gateway.dispatch.service import RequestContext


async def components(request: Request) -> Components:
    found = pipeline.components_of(request.scope)
    assert found is not None, "routes are served only between start-up and shutdown"
    return found


ComponentsDep = Annotated[Components, Depends(components)]


async def identity(request: Request, parts: ComponentsDep) -> Identity:
    return pipeline.identify(parts, request.headers.get("authorization"))


IdentityDep = Annotated[Identity, Depends(identity)]


async def admin_identity(who: IdentityDep) -> Identity:
    who.require_admin()
    return who


async def request_context(request: Request, who: IdentityDep) -> RequestContext:
    return pipeline.context(request.scope, who, request.headers)


async def request_body(request: Request, parts: ComponentsDep) -> bytes:
    return await pipeline.read_body(parts, request.receive, request.headers.get("content-length"))


ContextDep = Annotated[RequestContext, Depends(request_context)]
BodyDep = Annotated[bytes, Depends(request_body)]

# What every reading route answers: GET, and HEAD (the same status and headers, no body; uvicorn drops it).
READ = ["GET", "HEAD"]
