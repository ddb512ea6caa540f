"""``GET /metrics``: the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import ComponentsDep

router = APIRouter()


@router.get("/metrics")
async def metrics(parts: ComponentsDep) -> Response:
    return Response(parts.metrics.exposition(), media_type=parts.metrics.content_type)
