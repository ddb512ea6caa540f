"""The typed vocabulary of routing: what a request looks like to the router, and what it decides.

Only plain, immutable data lives here, so the gateway, the CLI and the tests build and read decisions
without touching I/O, and a decision can be explained (``rule`` and ``reason``) exactly as it was made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class TargetKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"
    RAG = "rag"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class Caps:
    """Upper bounds a target puts on the client's sampling parameters (``None``: no bound)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def __bool__(self) -> bool:
        return self.max_tokens is not None or self.temperature is not None or self.top_p is not None


NO_CAPS = Caps()


@dataclass(frozen=True, slots=True)
class RagOptions:
    """A rule's retrieval settings; ``None`` takes the collection's own."""

    on_empty: str | None = None  # answer | next_rule | refuse
    top_k: int | None = None
    score_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request is served, and how the request is shaped for it.

    ``name`` is what the backend knows the target by: the served base model, the adapter, the OpenAI
    model id, or (for RAG) the collection. A RAG target answers through its ``generator``.
    """

    kind: TargetKind
    name: str
    generator: Target | None = None
    system_prompt: str | None = None
    caps: Caps = NO_CAPS
    rag: RagOptions | None = None
    # ``kind:name`` (``rag:COLLECTION+adapter:NAME`` for the hybrid), as in ``x-turnout-route``: made once,
    # since every request reads it several times (headers, metric labels).
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = f"{self.kind.value}:{self.name}"
        if self.generator is not None:
            label += f"+{self.generator.label}"
        object.__setattr__(self, "label", label)

    def describe(self) -> dict[str, Any]:
        """The target as JSON-ready data, for explanations."""
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name, "label": self.label}
        if self.generator is not None:
            out["generator"] = self.generator.describe()
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        if self.caps:
            out["caps"] = {
                k: v
                for k, v in (
                    ("max_tokens", self.caps.max_tokens),
                    ("temperature", self.caps.temperature),
                    ("top_p", self.caps.top_p),
                )
                if v is not None
            }
        return out


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """The small description of a request that routing sees (never the raw body).

    ``embedding`` is the query's embedding, present only when the policy has a semantic condition;
    ``request_id`` seeds the split of requests that are not sticky, so a decision is reproducible;
    ``conversation`` identifies a conversation for sticky splits.
    """

    model: str
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=_empty)
    metadata: Mapping[str, Any] = field(default_factory=_empty)
    user: str | None = None
    text: str = ""
    message_count: int = 0
    token_estimate: int = 0
    embedding: Sequence[float] | None = None
    request_id: str = ""
    conversation: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to send a request, which rule said so and why, and what to try if that target fails."""

    target: Target
    rule: str
    reason: str
    fallbacks: tuple[Target, ...] = ()
    policy: str | None = None
    shadows: tuple[Target, ...] = ()  # also sent in the background (this request was sampled for them)
    intent: str | None = None  # the intent the rule's condition matched, when it computed one

    @property
    def chain(self) -> tuple[Target, ...]:
        """The target followed by its fallbacks, in the order they are tried."""
        return (self.target, *self.fallbacks)

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "target": self.target.describe(),
            "fallbacks": [t.describe() for t in self.fallbacks],
            **({"shadows": [t.describe() for t in self.shadows]} if self.shadows else {}),
        }
