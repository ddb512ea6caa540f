"""The policy language as it is written in the configuration file (pydantic models, validated once).

A policy is an ordered list of rules; the first rule whose ``when`` holds decides, and ``default``
decides when none does. A rule sends to one ``target`` or splits traffic across weighted ``arms``.

Targets are written either as a short string (``base``, ``adapter:NAME``, ``openai:MODEL``,
``rag:COLLECTION``, ``rag:COLLECTION+adapter:NAME``) or as an object with exactly one of ``base``,
``adapter``, ``openai``, ``rag`` and the optional ``system_prompt`` and ``caps``.
Conditions are objects whose keys must all hold; ``all``, ``any`` and ``not`` combine them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_S = TypeVar("_S", bound=BaseModel)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"

KeyPath = tuple[str | int, ...]  # where something stands in the file: mapping keys and list positions


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CapsSpec(_Spec):
    max_tokens: int | None = Field(None, ge=1, description="Largest max_tokens the target accepts; also the default.")
    temperature: float | None = Field(None, ge=0, le=2, description="Highest temperature the target accepts.")
    top_p: float | None = Field(None, gt=0, le=1, description="Highest top_p the target accepts.")


class RagSpec(_Spec):
    collection: str = Field(description="The collection retrieved from.")
    generator: str = Field("base", description="What answers with the retrieved context: base or adapter:NAME.")
    on_empty: Literal["answer", "next_rule", "refuse"] | None = Field(
        None, description="When nothing clears the threshold (default: the collection's setting)."
    )
    top_k: int | None = Field(None, ge=1, le=50, description="Chunks retrieved (default: the collection's).")
    score_threshold: float | None = Field(
        None, ge=-1, le=1, description="Lowest similarity (default: the collection's)."
    )

    @field_validator("generator")
    @classmethod
    def _generator(cls, value: str) -> str:
        if value != "base" and not re.match(r"^adapter:.+", value):
            raise ValueError(f"generator must be 'base' or 'adapter:NAME', not {value!r}")
        return value


class TargetSpec(_Spec):
    base: bool | None = Field(None, description="true: the base model.")
    adapter: str | None = Field(None, description="A declared LoRA adapter.")
    openai: str | None = Field(None, description="An OpenAI model id, such as a fine-tune ft:gpt-4o-mini-...")
    rag: RagSpec | None = Field(None, description="Retrieval from a collection, answered by a generator.")
    system_prompt: str | None = Field(None, description="System prompt put before the client's messages.")
    caps: CapsSpec = Field(default_factory=CapsSpec, description="Bounds on the client's sampling parameters.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text == "base":
            return {"base": True}
        kind, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(
                f"{value!r} is not a target: write base, adapter:NAME, openai:MODEL, rag:COLLECTION "
                "or rag:COLLECTION+adapter:NAME"
            )
        if kind == "adapter":
            return {"adapter": rest}
        if kind == "openai":
            return {"openai": rest}
        if kind == "rag":
            collection, plus, generator = rest.partition("+")
            return {"rag": {"collection": collection, "generator": generator if plus else "base"}}
        raise ValueError(f"{value!r}: unknown target kind {kind!r} (base, adapter, openai or rag)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        kinds = [k for k in ("adapter", "openai", "rag") if getattr(self, k) is not None]
        if self.base:
            kinds.append("base")
        if len(kinds) != 1:
            raise ValueError(
                "a target needs exactly one of base, adapter, openai, rag"
                + (f" (this one has {', '.join(kinds)})" if kinds else "")
            )
        return self


class _ValueTestSpec(_Spec):
    """A test of one value: equal to, matching a regex (search), or present at all."""

    equals: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("regex")
    @classmethod
    def _regex_ok(cls, value: str | None) -> str | None:
        return _regex(value)


class HeaderSpec(_ValueTestSpec):
    name: str = Field(description="Header name (case-insensitive).")

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        return _one_of(self, ("equals", "regex", "present"), f"header {self.name!r}")


class MetadataSpec(_ValueTestSpec):
    key: str = Field(description="Key in the request's metadata object.")
    in_: list[str] | None = Field(None, alias="in")

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        return _one_of(self, ("equals", "regex", "in_", "present"), f"metadata {self.key!r}")


class RangeSpec(_Spec):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ConditionSpec(_Spec):
    """Every key given must hold. An empty condition is refused (leave ``when`` out to always match)."""

    model: str | list[str] | None = Field(None, description="The model name the client asked for.")
    tenant: str | list[str] | None = Field(None, description="The caller's tenant.")
    user: str | list[str] | None = Field(None, description="The request's user field.")
    header: HeaderSpec | None = None
    metadata: MetadataSpec | None = None
    keywords: list[str] | None = Field(None, description="Any of these words in the last user message.")
    regex: str | None = Field(None, description="A regular expression searched in the last user message.")
    messages: RangeSpec | None = Field(None, description="Number of messages.")
    tokens: RangeSpec | None = Field(None, description="Estimated prompt tokens.")
    intent: str | None = Field(None, description="The semantic intent the request matches, or 'abstain'.")
    all_: list[ConditionSpec] | None = Field(None, alias="all")
    any_: list[ConditionSpec] | None = Field(None, alias="any")
    not_: ConditionSpec | None = Field(None, alias="not")

    @field_validator("regex")
    @classmethod
    def _regex_ok(cls, value: str | None) -> str | None:
        return _regex(value)

    @field_validator("keywords")
    @classmethod
    def _keywords_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(w.strip() for w in value)):
            raise ValueError("keywords must be a non-empty list of non-empty words")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("an empty condition: leave 'when' out for a rule that always matches")
        return self


class ArmSpec(_Spec):
    weight: float = Field(gt=0, description="Share of traffic, relative to the other arms.")
    target: TargetSpec


class SplitSpec(_Spec):
    sticky: Literal["user", "conversation", "none"] = Field(
        "user",
        description="user: one user stays on one arm; conversation: one conversation does; none: per request.",
    )
    arms: Annotated[list[ArmSpec], Field(min_length=2)]


class ShadowSpec(_Spec):
    """Other targets a sampled share of requests is also sent to, in the background, to compare with the
    answer the client gets (which they never delay or change)."""

    targets: Annotated[list[TargetSpec], Field(min_length=1, max_length=8)]
    sample: float = Field(0.1, gt=0, le=1, description="The share of requests also sent to the shadow targets.")


class RuleSpec(_Spec):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    when: ConditionSpec | None = Field(None, description="Omitted: the rule always matches.")
    target: TargetSpec | None = None
    split: SplitSpec | None = None
    fallbacks: list[TargetSpec] | None = Field(None, description="Overrides the policy's fallbacks for this rule.")
    shadow: ShadowSpec | None = Field(None, description="Overrides the policy's shadow arms for this rule.")

    @model_validator(mode="after")
    def _one_destination(self) -> Self:
        if (self.target is None) == (self.split is None):
            raise ValueError(f"rule {self.name!r} needs exactly one of target or split")
        return self


class PolicySpec(_Spec):
    description: str = ""
    rules: list[RuleSpec] = Field(default_factory=list)
    default: TargetSpec = Field(description="Where a request goes when no rule matches.")
    fallbacks: list[TargetSpec] = Field(
        default_factory=list, description="Tried in order when the chosen target fails before its first byte."
    )
    shadow: ShadowSpec | None = Field(None, description="Shadow arms of every rule without its own (off: none).")

    def targets(self) -> list[tuple[KeyPath, TargetSpec]]:
        """Every target the policy names, with where it stands as key parts (``("rules", 2, "target")``)."""
        found: list[tuple[KeyPath, TargetSpec]] = [(("default",), self.default)]
        found += [(("fallbacks", i), t) for i, t in enumerate(self.fallbacks)]
        found += [(("shadow", "targets", i), t) for i, t in enumerate(self.shadow.targets if self.shadow else [])]
        for i, rule in enumerate(self.rules):
            if rule.target is not None:
                found.append((("rules", i, "target"), rule.target))
            for j, arm in enumerate(rule.split.arms if rule.split is not None else []):
                found.append((("rules", i, "split", "arms", j, "target"), arm.target))
            found += [(("rules", i, "fallbacks", j), t) for j, t in enumerate(rule.fallbacks or [])]
            shadows = rule.shadow.targets if rule.shadow else []
            found += [(("rules", i, "shadow", "targets", j), t) for j, t in enumerate(shadows)]
        return found

    @model_validator(mode="after")
    def _unique_rules(self) -> Self:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen or rule.name == "default":
                raise ValueError(f"rule name {rule.name!r} is used twice (or is the reserved name 'default')")
            seen.add(rule.name)
        return self


class IntentSpec(_Spec):
    examples: Annotated[list[str], Field(min_length=1)] = Field(description="Utterances that carry the intent.")
    threshold: float = Field(0.5, ge=-1, le=1, description="Lowest cosine similarity that counts as a match.")


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _one_of(spec: _S, fields: tuple[str, ...], what: str) -> _S:
    given = [f.rstrip("_") for f in fields if getattr(spec, f) is not None]
    if len(given) != 1:
        names = ", ".join(f.rstrip("_") for f in fields)
        raise ValueError(f"{what}: give exactly one of {names}" + (f" (got {', '.join(given)})" if given else ""))
    return spec
