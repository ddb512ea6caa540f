"""What ties one section of the configuration to another, and the one notation every problem's key is written in.

A rule names adapters, intents and collections declared in other sections, and a policy's name must not be
a model's. These checks read a :class:`Declared` view. The model builds it from a valid file; the loader
builds it from the parts of an invalid file that validate on their own, so a file with a schema error and
an undeclared adapter reports both in one pass instead of one per attempt.

Key paths (:func:`key_path`) join mapping keys with dots and put list positions in brackets, and a key
holding anything but letters, digits, ``_`` and ``-`` is quoted in brackets:
``policies.support-bot.rules[3].when``, ``adapters["llama-3.1"].path``. A position never reads as a key
(``3`` is a valid adapter or policy name), and a dotted name never reads as two keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from routing.conditions import ABSTAIN, intents_used
from routing.spec import ConditionSpec, KeyPath, PolicySpec, TargetSpec

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_M = TypeVar("_M", bound=BaseModel)


def key_path(parts: Iterable[str | int]) -> str:
    """``("policies", "bot", "rules", 3, "when")`` as ``policies.bot.rules[3].when``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _BARE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


@dataclass(frozen=True, slots=True)
class PolicyParts:
    """A policy's targets and rule conditions, each with its key path inside the policy."""

    targets: list[tuple[KeyPath, TargetSpec]] = field(default_factory=list)
    conditions: list[tuple[KeyPath, ConditionSpec]] = field(default_factory=list)

    @classmethod
    def of(cls, policy: PolicySpec) -> PolicyParts:
        conditions: list[tuple[KeyPath, ConditionSpec]] = [
            (("rules", i, "when"), r.when) for i, r in enumerate(policy.rules) if r.when is not None
        ]
        return cls(policy.targets(), conditions)

    @classmethod
    def of_raw(cls, raw: object) -> PolicyParts:
        """The parts of a policy as written, each validated alone; the ones that fail are left out (the schema
        reports them). Walks the policy in the order of :meth:`PolicySpec.targets`."""
        parts = cls()
        if not isinstance(raw, Mapping):
            return parts

        def target(at: KeyPath, value: object) -> None:
            spec = valid(TargetSpec, value)
            if spec is not None:
                parts.targets.append((at, spec))

        if "default" in raw:
            target(("default",), raw["default"])
        for i, value in _positions(raw.get("fallbacks")):
            target(("fallbacks", i), value)
        for i, rule in _positions(raw.get("rules")):
            if not isinstance(rule, Mapping):
                continue
            when = valid(ConditionSpec, rule["when"]) if rule.get("when") is not None else None
            if when is not None:
                parts.conditions.append((("rules", i, "when"), when))
            if "target" in rule:
                target(("rules", i, "target"), rule["target"])
            split = rule.get("split")
            for j, arm in _positions(split.get("arms") if isinstance(split, Mapping) else None):
                if isinstance(arm, Mapping) and "target" in arm:
                    target(("rules", i, "split", "arms", j, "target"), arm["target"])
            for j, value in _positions(rule.get("fallbacks")):
                target(("rules", i, "fallbacks", j), value)
        return parts


@dataclass(frozen=True, slots=True)
class Declared:
    """What the file declares, as far as it is known. ``None``: that section does not validate, so nothing
    that needs it is checked (its own problems are reported)."""

    base: str | None
    adapters: frozenset[str] | None
    intents: frozenset[str] | None
    collections: Mapping[str, str | None] | None  # name -> on_empty (None: the collection does not validate)
    key_digests: Sequence[str | None] | None  # of auth.keys, by position (None: that key does not validate)
    policies: Mapping[str, PolicyParts]


def problems(declared: Declared) -> list[str]:
    """One ``key.path: problem`` line per broken reference or clashing name."""
    found: list[str] = []
    base, adapters = declared.base, declared.adapters
    if base is not None and adapters is not None and base in adapters:
        found.append(f"{key_path(('adapters', base))}: the name is also the base model's name; rename one of them")
    for name in declared.policies:
        if name == base or (adapters is not None and name in adapters):
            found.append(f"{key_path(('policies', name))}: the name is also a model or adapter name; rename the policy")
    if declared.intents is not None and ABSTAIN in declared.intents:
        found.append(f"{key_path(('intents', ABSTAIN))}: the name is reserved for 'no intent matched'")
    first: dict[str, int] = {}
    for i, digest in enumerate(declared.key_digests or []):
        if digest is None:
            continue
        if digest in first:
            found.append(f"auth.keys[{i}]: the same key as auth.keys[{first[digest]}]")
        first.setdefault(digest, i)
    for name, parts in declared.policies.items():
        for at, problem in _policy_problems(parts, declared):
            found.append(f"{key_path(('policies', name, *at))}: {problem}")
    return found


def _policy_problems(parts: PolicyParts, declared: Declared) -> Iterable[tuple[KeyPath, str]]:
    intents = declared.intents
    for at, when in parts.conditions:
        used = intents_used(when)
        if intents is not None:
            for intent in sorted(used - {ABSTAIN} - intents):
                yield at, f"intent {intent!r} is not defined under intents"
            if ABSTAIN in used and not intents:
                yield at, "intent 'abstain' needs intents to abstain from; none are defined"
    collections = declared.collections
    for at, target in parts.targets:
        names = [target.adapter] if target.adapter else []
        rag = target.rag
        if rag is not None and rag.generator != "base":
            names.append(rag.generator.partition(":")[2])
        if declared.adapters is not None:
            for adapter in names:
                if adapter not in declared.adapters:
                    yield at, f"adapter {adapter!r} is not declared under adapters"
        if rag is None or collections is None:
            continue
        if rag.collection not in collections:
            yield at, f"collection {rag.collection!r} is not declared under rag.collections"
        elif at[0] in ("default", "fallbacks") and (rag.on_empty or collections[rag.collection]) == "next_rule":
            yield at, "on_empty next_rule needs a next rule; a default or fallback has none"


def valid(model: type[_M], value: object) -> _M | None:
    """``value`` validated as ``model``, or None when it does not validate."""
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _positions(value: object) -> Iterable[tuple[int, Any]]:
    return enumerate(value) if isinstance(value, list) else ()


__all__ = ["Declared", "PolicyParts", "key_path", "problems", "valid"]
