"""Policies: ordered rules, first match wins, weighted splits and fallbacks; ``decide`` and ``explain``.

``decide`` is on every request's path and does no more than test conditions in order until one holds
(no strings are built but the precomputed reason). ``explain`` evaluates every rule and returns the
whole trace, for ``/v1/route/explain`` and ``turnout route explain``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from routing.conditions import Condition, Scratch, compile_condition, intents_used, reads_text
from routing.decision import Caps, Decision, RagOptions, RequestFeatures, Target, TargetKind
from routing.spec import PolicySpec, ShadowSpec, SplitSpec, TargetSpec

if TYPE_CHECKING:
    from routing.intents import IntentIndex  # numpy is imported only where intents are configured

TargetResolver = Callable[[TargetSpec], Target]


@dataclass(frozen=True, slots=True)
class Shadow:
    """Targets a sampled share of requests is also sent to; the sample is drawn by hashing the request id,
    so a decision stays reproducible."""

    targets: tuple[Target, ...]
    sample: float

    def arms(self, salt: str, features: RequestFeatures, chosen: Target) -> tuple[Target, ...]:
        """The shadow targets for this request (none unless it is sampled; never the chosen target itself)."""
        digest = hashlib.blake2b(f"{salt}\0shadow\0{features.request_id}".encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") / 2**64 >= self.sample:
            return ()
        return tuple(t for t in self.targets if t != chosen)


@dataclass(frozen=True, slots=True)
class Split:
    """Weighted arms; the arm is chosen by hashing the sticky key, so the same key gets the same arm."""

    sticky: str
    targets: tuple[Target, ...]
    weights: tuple[float, ...]
    bounds: tuple[float, ...]  # cumulative weights

    @classmethod
    def of(cls, spec: SplitSpec, resolve: TargetResolver) -> Split:
        weights = tuple(arm.weight for arm in spec.arms)
        return cls(spec.sticky, tuple(resolve(arm.target) for arm in spec.arms), weights, tuple(accumulate(weights)))

    def choose(self, salt: str, features: RequestFeatures) -> tuple[int, str]:
        """The arm's index and what its choice was keyed on."""
        key: str | None = None
        keyed = "request"
        if self.sticky == "user" and features.user:
            key, keyed = features.user, "user"
        elif self.sticky == "conversation" and features.conversation:
            key, keyed = features.conversation, "conversation"
        if key is None:
            key = features.request_id
        digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * self.bounds[-1]
        for index, bound in enumerate(self.bounds):
            if point < bound:
                return index, keyed
        return len(self.bounds) - 1, keyed  # pragma: no cover  (float rounding at the very top)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    condition: Condition | None
    target: Target | None
    split: Split | None
    fallbacks: tuple[Target, ...] | None
    reason: str
    shadow: Shadow | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str
    rules: tuple[Rule, ...]
    default: Target
    fallbacks: tuple[Target, ...]
    intents: IntentIndex | None
    needs_embedding: bool
    shadow: Shadow | None = None
    reads_text: bool = False  # a condition reads the message's text (keywords, regex)
    # (rule, its bound test) pairs, made once: the hot loop then does no attribute look-ups
    checks: tuple[tuple[Rule, Callable[[Scratch], bool] | None], ...] = ()

    def __post_init__(self) -> None:
        checks = tuple((r, r.condition.test if r.condition is not None else None) for r in self.rules)
        object.__setattr__(self, "checks", checks)

    @property
    def needs_conversation(self) -> bool:
        """Whether a split keeps conversations on one arm (only then is a request's conversation worked out)."""
        return any(rule.split is not None and rule.split.sticky == "conversation" for rule in self.rules)

    def decide(self, features: RequestFeatures, after: str | None = None) -> Decision:
        """The first matching rule's decision; ``after`` skips the rules up to and including that one
        (a RAG rule whose retrieval came back empty passes the request on this way)."""
        scratch = Scratch(features, self.intents)
        checks = self.checks
        if after is not None:
            names = [rule.name for rule, _ in checks]
            checks = checks[names.index(after) + 1 :] if after in names else ()
        for rule, test in checks:
            if test is None or test(scratch):
                return self._decision(rule, scratch)
        shadows = self.shadow.arms(f"{self.name}/default", features, self.default) if self.shadow else ()
        return Decision(
            self.default, "default", "no rule matched", self._chain(self.fallbacks, self.default), self.name, shadows
        )

    def explain(self, features: RequestFeatures) -> dict[str, Any]:
        """The decision plus every rule's evaluation, in order, and the intent scores when computed."""
        scratch = Scratch(features, self.intents)
        trace: list[dict[str, Any]] = []
        decision: Decision | None = None
        for rule in self.rules:
            entry: dict[str, Any] = {"rule": rule.name}
            if rule.condition is None:
                entry["matched"] = True
            else:
                entry.update(rule.condition.trace(scratch))
            if decision is None and entry["matched"]:
                decision = self._decision(rule, scratch)
                entry["chosen"] = True
            trace.append(entry)
        if decision is None:
            decision = self.decide(features)
        out: dict[str, Any] = {"decision": decision.describe(), "rules": trace}
        if scratch.intent_computed is not None:
            match = scratch.intent_computed
            out["intent"] = {
                "intent": match.intent,
                "score": round(match.score, 4),
                "scores": {k: round(v, 4) for k, v in match.scores.items()},
            }
        return out

    def _decision(self, rule: Rule, scratch: Scratch) -> Decision:
        reason = rule.reason
        intent = scratch.intent_computed
        if intent is not None:
            reason += f"; intent {intent.intent or 'abstain'} scored {intent.score:.3f}"
        if rule.split is not None:
            index, keyed = rule.split.choose(f"{self.name}/{rule.name}", scratch.features)
            target = rule.split.targets[index]
            reason += (
                f"; split arm {index + 1} of {len(rule.split.targets)} "
                f"(weight {rule.split.weights[index]:g} of {rule.split.bounds[-1]:g}) by {keyed}"
            )
        else:
            assert rule.target is not None
            target = rule.target
        fallbacks = rule.fallbacks if rule.fallbacks is not None else self.fallbacks
        shadow = rule.shadow or self.shadow
        shadows = shadow.arms(f"{self.name}/{rule.name}", scratch.features, target) if shadow else ()
        named = intent.intent if intent is not None else None
        return Decision(target, rule.name, reason, self._chain(fallbacks, target), self.name, shadows, named)

    @staticmethod
    def _chain(fallbacks: tuple[Target, ...], chosen: Target) -> tuple[Target, ...]:
        return tuple(t for t in fallbacks if t != chosen)


def compile_policy(name: str, spec: PolicySpec, resolve: TargetResolver, intents: IntentIndex | None) -> Policy:
    """Turn a validated policy spec into the engine's form; targets are resolved by the caller."""
    rules = []
    needs_embedding = False
    for rule in spec.rules:
        condition = compile_condition(rule.when) if rule.when is not None else None
        needs_embedding = needs_embedding or bool(intents_used(rule.when))
        rules.append(
            Rule(
                name=rule.name,
                condition=condition,
                target=resolve(rule.target) if rule.target is not None else None,
                split=Split.of(rule.split, resolve) if rule.split is not None else None,
                fallbacks=tuple(resolve(t) for t in rule.fallbacks) if rule.fallbacks is not None else None,
                reason=condition.describe() if condition is not None else "always",
                shadow=_shadow(rule.shadow, resolve),
            )
        )
    if needs_embedding and intents is None:
        raise ValueError(f"policy {name!r} uses intents, but no intents are configured")
    return Policy(
        name=name,
        description=spec.description,
        rules=tuple(rules),
        default=resolve(spec.default),
        fallbacks=tuple(resolve(t) for t in spec.fallbacks),
        intents=intents if needs_embedding else None,
        needs_embedding=needs_embedding,
        shadow=_shadow(spec.shadow, resolve),
        reads_text=any(reads_text(rule.when) for rule in spec.rules),
    )


def _shadow(spec: ShadowSpec | None, resolve: TargetResolver) -> Shadow | None:
    return Shadow(tuple(resolve(t) for t in spec.targets), spec.sample) if spec is not None else None


def target_resolver(base_model: str) -> TargetResolver:
    """Resolves target specs against the served base model's name (the one vLLM knows it by)."""

    def resolve(spec: TargetSpec) -> Target:
        caps = Caps(**spec.caps.model_dump())
        prompt = spec.system_prompt
        if spec.adapter is not None:
            return Target(TargetKind.ADAPTER, spec.adapter, None, prompt, caps)
        if spec.openai is not None:
            return Target(TargetKind.OPENAI, spec.openai, None, prompt, caps)
        if spec.rag is not None:
            generator = spec.rag.generator
            answer = (
                Target(TargetKind.BASE, base_model)
                if generator == "base"
                else Target(TargetKind.ADAPTER, generator.partition(":")[2])
            )
            options = RagOptions(spec.rag.on_empty, spec.rag.top_k, spec.rag.score_threshold)
            return Target(TargetKind.RAG, spec.rag.collection, answer, prompt, caps, options)
        return Target(TargetKind.BASE, base_model, None, prompt, caps)

    return resolve
