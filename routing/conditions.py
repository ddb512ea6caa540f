"""Compiled conditions: each tests one fact about a request, cheaply, and can say what it tested.

``test`` runs on every request and must stay in the microseconds; ``describe`` and ``trace`` run only
to explain a decision. Per-request values that cost something (the semantic intent) are computed once,
on first use, in :class:`Scratch`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from routing.decision import RequestFeatures
from routing.spec import ConditionSpec, HeaderSpec, MetadataSpec, RangeSpec

if TYPE_CHECKING:
    from routing.intents import IntentIndex, IntentMatch

ABSTAIN = "abstain"
_WORD = re.compile(r"\w+")


class Scratch:
    """One request's features plus what conditions computed about it (the intent, once)."""

    __slots__ = ("_intent", "_lowered", "_words", "features", "intents")

    def __init__(self, features: RequestFeatures, intents: IntentIndex | None) -> None:
        self.features = features
        self.intents = intents
        self._intent: IntentMatch | None = None
        self._words: frozenset[str] | None = None
        self._lowered: str | None = None

    def lowered(self) -> str:
        if self._lowered is None:
            self._lowered = self.features.text.lower()
        return self._lowered

    def words(self) -> frozenset[str]:
        """The message's words, lower-cased, split once however many keyword conditions ask."""
        if self._words is None:
            self._words = frozenset(_WORD.findall(self.lowered()))
        return self._words

    def intent(self) -> IntentMatch:
        if self._intent is None:
            if self.intents is None:
                raise ValueError("an intent condition needs intents to be configured")
            self._intent = self.intents.classify(self.features.embedding)
        return self._intent

    @property
    def intent_computed(self) -> IntentMatch | None:
        return self._intent


class Condition(Protocol):
    def test(self, s: Scratch) -> bool: ...

    def describe(self) -> str: ...

    def trace(self, s: Scratch) -> dict[str, Any]: ...


class _Leaf:
    __slots__ = ()

    def test(self, s: Scratch) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def trace(self, s: Scratch) -> dict[str, Any]:
        return {"condition": self.describe(), "matched": self.test(s)}


class _OneOf(_Leaf):
    """A request field equal to one of a few values (model, tenant, user)."""

    __slots__ = ("field", "get", "values")

    def __init__(self, field: str, values: str | list[str], get: Callable[[RequestFeatures], str | None]) -> None:
        self.field = field
        self.values = frozenset([values] if isinstance(values, str) else values)
        self.get = get

    def test(self, s: Scratch) -> bool:
        return self.get(s.features) in self.values

    def describe(self) -> str:
        if len(self.values) == 1:
            return f"{self.field} is {next(iter(self.values))!r}"
        return f"{self.field} is one of {sorted(self.values)}"


class _Match(_Leaf):
    """A header or metadata value: equals, matches a regex, is one of, or is present."""

    __slots__ = ("equals", "get", "label", "one_of", "pattern", "present")

    def __init__(self, label: str, get: Callable[[RequestFeatures], Any], spec: HeaderSpec | MetadataSpec) -> None:
        self.label = label
        self.get = get
        self.equals = spec.equals
        self.pattern = re.compile(spec.regex) if spec.regex is not None else None
        self.one_of = frozenset(spec.in_) if isinstance(spec, MetadataSpec) and spec.in_ is not None else None
        self.present = spec.present

    def test(self, s: Scratch) -> bool:
        value = self.get(s.features)
        if self.present is not None:
            return (value is not None) is self.present
        if value is None:
            return False
        value = str(value)
        if self.equals is not None:
            return value == self.equals
        if self.pattern is not None:
            return self.pattern.search(value) is not None
        return self.one_of is not None and value in self.one_of

    def describe(self) -> str:
        if self.present is not None:
            return f"{self.label} is {'present' if self.present else 'absent'}"
        if self.equals is not None:
            return f"{self.label} = {self.equals!r}"
        if self.pattern is not None:
            return f"{self.label} matches /{self.pattern.pattern}/"
        return f"{self.label} is one of {sorted(self.one_of or ())}"


class _TextSearch(_Leaf):
    __slots__ = ("label", "pattern")

    def __init__(self, pattern: re.Pattern[str], label: str) -> None:
        self.pattern = pattern
        self.label = label

    def test(self, s: Scratch) -> bool:
        return self.pattern.search(s.features.text) is not None

    def describe(self) -> str:
        return self.label


class _Keywords(_Leaf):
    """Any of some words (whole words, any case); phrases of several words are searched as text."""

    __slots__ = ("keywords", "phrases", "words")

    def __init__(self, keywords: list[str]) -> None:
        self.keywords = keywords
        cleaned = [k.strip().lower() for k in keywords]
        self.words = frozenset(k for k in cleaned if _WORD.fullmatch(k))
        rest = [k for k in cleaned if k not in self.words]
        self.phrases = re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, rest))})(?!\w)") if rest else None

    def test(self, s: Scratch) -> bool:
        if not self.words.isdisjoint(s.words()):
            return True
        return self.phrases is not None and self.phrases.search(s.lowered()) is not None

    def describe(self) -> str:
        return f"message mentions any of {self.keywords}"


class _Range(_Leaf):
    __slots__ = ("get", "high", "label", "low")

    def __init__(self, label: str, spec: RangeSpec, get: Callable[[RequestFeatures], int]) -> None:
        self.label = label
        self.low = spec.min if spec.min is not None else 0
        self.high = spec.max
        self.get = get

    def test(self, s: Scratch) -> bool:
        value = self.get(s.features)
        return value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{self.label} >= {self.low}"
        return f"{self.label} in [{self.low}, {self.high}]"


class _Intent(_Leaf):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def test(self, s: Scratch) -> bool:
        match = s.intent().intent
        return match is None if self.name == ABSTAIN else match == self.name

    def describe(self) -> str:
        return "no intent clears its threshold (abstain)" if self.name == ABSTAIN else f"intent is {self.name!r}"

    def trace(self, s: Scratch) -> dict[str, Any]:
        match = s.intent()
        return {
            "condition": self.describe(),
            "matched": self.test(s),
            "intent": match.intent,
            "score": round(match.score, 4),
        }


class _All:
    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Condition]) -> None:
        self.parts = tuple(parts)

    def test(self, s: Scratch) -> bool:
        for part in self.parts:  # noqa: SIM110  (a plain loop: a generator costs a frame per call here)
            if not part.test(s):
                return False
        return True

    def describe(self) -> str:
        return " and ".join(_wrap(p) for p in self.parts)

    def trace(self, s: Scratch) -> dict[str, Any]:
        parts = [p.trace(s) for p in self.parts]
        return {"all": parts, "matched": all(p["matched"] for p in parts)}


class _Any(_All):
    __slots__ = ()

    def test(self, s: Scratch) -> bool:
        for part in self.parts:  # noqa: SIM110  (as above)
            if part.test(s):
                return True
        return False

    def describe(self) -> str:
        return " or ".join(_wrap(p) for p in self.parts)

    def trace(self, s: Scratch) -> dict[str, Any]:
        parts = [p.trace(s) for p in self.parts]
        return {"any": parts, "matched": any(p["matched"] for p in parts)}


class _Not:
    __slots__ = ("part",)

    def __init__(self, part: Condition) -> None:
        self.part = part

    def test(self, s: Scratch) -> bool:
        return not self.part.test(s)

    def describe(self) -> str:
        return f"not {_wrap(self.part)}"

    def trace(self, s: Scratch) -> dict[str, Any]:
        inner = self.part.trace(s)
        return {"not": inner, "matched": not inner["matched"]}


def _wrap(condition: Condition) -> str:
    text = condition.describe()
    return f"({text})" if isinstance(condition, _All | _Not) and " " in text else text


def compile_condition(spec: ConditionSpec) -> Condition:
    """The condition a spec describes; several keys in one spec must all hold."""
    parts: list[Condition] = []
    if spec.model is not None:
        parts.append(_OneOf("model", spec.model, attrgetter("model")))
    if spec.tenant is not None:
        parts.append(_OneOf("tenant", spec.tenant, attrgetter("tenant")))
    if spec.user is not None:
        parts.append(_OneOf("user", spec.user, attrgetter("user")))
    if spec.header is not None:
        name = spec.header.name.lower()
        parts.append(_Match(f"header {name}", lambda f: f.headers.get(name), spec.header))
    if spec.metadata is not None:
        key = spec.metadata.key
        parts.append(_Match(f"metadata.{key}", lambda f: f.metadata.get(key), spec.metadata))
    if spec.keywords is not None:
        parts.append(_Keywords(spec.keywords))
    if spec.regex is not None:
        parts.append(_TextSearch(re.compile(spec.regex), f"message matches /{spec.regex}/"))
    if spec.messages is not None:
        parts.append(_Range("message count", spec.messages, attrgetter("message_count")))
    if spec.tokens is not None:
        parts.append(_Range("estimated tokens", spec.tokens, attrgetter("token_estimate")))
    if spec.intent is not None:
        parts.append(_Intent(spec.intent))
    if spec.all_ is not None:
        parts.append(_All([compile_condition(c) for c in spec.all_]))
    if spec.any_ is not None:
        parts.append(_Any([compile_condition(c) for c in spec.any_]))
    if spec.not_ is not None:
        parts.append(_Not(compile_condition(spec.not_)))
    return parts[0] if len(parts) == 1 else _All(parts)


def intents_used(spec: ConditionSpec | None) -> set[str]:
    """Every intent name a condition refers to (``abstain`` included)."""
    if spec is None:
        return set()
    found = {spec.intent} if spec.intent is not None else set()
    for child in [*(spec.all_ or []), *(spec.any_ or []), *([spec.not_] if spec.not_ else [])]:
        found |= intents_used(child)
    return found


def reads_text(spec: ConditionSpec | None) -> bool:
    """Whether a condition reads the message's text (keywords, a regular expression)."""
    if spec is None:
        return False
    if spec.keywords is not None or spec.regex is not None:
        return True
    return any(
        reads_text(child) for child in [*(spec.all_ or []), *(spec.any_ or []), *([spec.not_] if spec.not_ else [])]
    )
