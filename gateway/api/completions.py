"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import BodyDep, ComponentsDep, ContextDep

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: BodyDep, parts: ComponentsDep, ctx: ContextDep) -> Response:
    return await parts.service.complete("chat", body, ctx)


@router.post("/v1/completions")
async def completions(body: BodyDep, parts: ComponentsDep, ctx: ContextDep) -> Response:
    return await parts.service.complete("completions", body, ctx)
