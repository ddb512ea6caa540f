"""``POST /v1/route/explain``: the routing decision for a chat request, and why, without serving it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import BodyDep, ComponentsDep, ContextDep

router = APIRouter()


@router.post("/v1/route/explain")
async def explain_route(body: BodyDep, parts: ComponentsDep, ctx: ContextDep) -> dict[str, Any]:
    return await parts.service.explain("chat", body, ctx)
