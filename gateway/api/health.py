"""``GET /health`` (the process is alive) and ``GET /ready`` (its upstream answers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import ComponentsDep
from gateway.errors import TurnoutError, UpstreamUnavailable

router = APIRouter()

_READY_TIMEOUT_S = 3.0


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(parts: ComponentsDep) -> dict[str, Any]:
    upstream = parts.upstream
    try:
        status, _ = await upstream.request("GET", "/health", timeout_s=_READY_TIMEOUT_S)
    except TurnoutError as exc:
        raise UpstreamUnavailable(f"not ready: vLLM at {upstream.url} does not answer ({exc.message})") from exc
    if status != 200:
        raise UpstreamUnavailable(f"not ready: vLLM at {upstream.url} answered /health with {status}")
    return {"status": "ready", "upstreams": {"vllm": "ok"}}
