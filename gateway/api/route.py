"""``POST /v1/route/explain``: the routing decision for a chat or Responses request, and why, without serving it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import BodyDep, ComponentsDep, ContextDep
from gateway.protocol.requests import endpoint_of

router = APIRouter()


@router.post("/v1/route/explain")
async def explain_route(body: BodyDep, parts: ComponentsDep, ctx: ContextDep) -> dict[str, Any]:
    async with parts.admission.slot():  # the same work as a completion's routing, the embedding included
        return await parts.service.explain(endpoint_of(body), body, ctx)
