"""The typed vocabulary of routing: what a request looks like to the router, and what it decides.

Only plain data lives here, so the gateway, the CLI and the tests build and read decisions without
touching I/O, and a decision can be explained (``rule`` and ``reason``) exactly as it was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class TargetKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request is served: a kind and the name the backend knows it by."""

    kind: TargetKind
    name: str

    @property
    def label(self) -> str:
        """``kind:name``, as shown in the ``x-turnout-route`` header."""
        return f"{self.kind.value}:{self.name}"


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """The small description of a request that routing sees (never the raw body)."""

    model: str
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    user: str | None = None
    text: str = ""
    message_count: int = 0
    token_estimate: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to send a request, which rule said so and why, and what to try if that target fails."""

    target: Target
    rule: str
    reason: str
    fallbacks: tuple[Target, ...] = ()

    @property
    def chain(self) -> tuple[Target, ...]:
        """The target followed by its fallbacks, in the order they are tried."""
        return (self.target, *self.fallbacks)
