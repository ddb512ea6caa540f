"""What a sampled request's shadow arms are sent (see :mod:`gateway.dispatch.shadows`), apart so that the
plain results (:mod:`gateway.dispatch.delivery`) can carry it without importing the runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.protocol.requests import Endpoint
from routing import Decision, RequestFeatures


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    """What a sampled request's shadow arms are sent: the client's request as routed, and when it came."""

    endpoint: Endpoint
    raw: bytes
    data: dict[str, Any]
    stream: bool
    features: RequestFeatures
    decision: Decision
    at: float  # unix time


__all__ = ["ShadowRequest"]
