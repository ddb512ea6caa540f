"""``GET /health`` (the process is alive) and ``GET /ready`` (its upstream answers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import READ, ComponentsDep
from gateway.errors import UpstreamUnavailable

router = APIRouter()


@router.api_route("/health", methods=READ)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route("/ready", methods=READ)
async def ready(parts: ComponentsDep) -> dict[str, Any]:
    """Ready while at least one vLLM replica answers its ``/health`` now."""
    answers = await parts.fleet.ready()
    if not any(answer == "ok" for answer in answers.values()):
        said = "; ".join(f"{name}: {answer}" for name, answer in answers.items()) or "no replica is known"
        raise UpstreamUnavailable(f"not ready: no vLLM replica answers ({said}; {parts.config.vllm.describe()})")
    return {"status": "ready", "upstreams": {"vllm": "ok"}, "replicas": answers}
