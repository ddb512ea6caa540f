"""Policy replay: the recorded requests (the features routing saw of each request sampled for shadow arms)
run through a candidate routing table, to see which decisions would change, and to what, before changing
anything.

A request is replayed from its recorded features: model, tenant, headers (never credentials), metadata,
user, message and token counts, conversation, and its query embedding when its policy computed one. A
candidate that uses intents where the recorded policy did not needs the request's text to embed: kept only
with ``shadows.keep_texts``; without it such requests are counted as not replayable, never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.evidence.store import RequestRecord
from routing import RequestFeatures, RoutingTable, decide

Embed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]


@dataclass(slots=True)
class Move:
    policy: str
    old_rule: str
    old_target: str
    new_rule: str
    new_target: str
    requests: int = 0
    samples: list[str] = field(default_factory=list)  # request ids (and texts, when kept)

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "from": {"rule": self.old_rule, "target": self.old_target},
            "to": {"rule": self.new_rule, "target": self.new_target},
            "requests": self.requests,
            "samples": self.samples,
        }


@dataclass(slots=True)
class Replay:
    requests: int = 0
    changed: int = 0
    not_replayable: int = 0  # needs the text (keywords, regex, an intent not embedded then), which was not kept
    gone: int = 0  # the policy is not in the candidate configuration
    by_rule: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: {"requests": 0, "changed": 0})
    )
    moves: list[Move] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "changed": self.changed,
            "unchanged": self.requests - self.changed - self.not_replayable - self.gone,
            "not_replayable": self.not_replayable,
            "policy_gone": self.gone,
            "by_rule": {rule: dict(counts) for rule, counts in sorted(self.by_rule.items())},
            "moves": [move.describe() for move in self.moves],
        }


async def replay(
    records: Iterable[RequestRecord], table: RoutingTable, embed: Embed | None = None, samples: int = 3
) -> Replay:
    """Decide every record again with ``table``; ``embed`` gives query embeddings from kept texts."""
    result = Replay()
    moves: dict[tuple[str, str, str, str, str], Move] = {}
    for record in records:
        result.requests += 1
        counts = result.by_rule[f"{record.policy}/{record.rule}"]
        counts["requests"] += 1
        features = _features(record)
        if record.policy not in table.models:
            result.gone += 1
            continue
        if table.reads_text(record.policy) and not record.text:
            result.not_replayable += 1  # keywords or a regex with no text kept: never guessed
            continue
        if table.needs_embedding(record.policy) and features.embedding is None:
            if embed is None or not record.text:
                result.not_replayable += 1
                continue
            [vector] = await embed([record.text])
            features = replace(features, embedding=list(vector))
        decision = decide(features, table)
        assert decision is not None
        if (decision.rule, decision.target.label) == (record.rule, record.target):
            continue
        result.changed += 1
        counts["changed"] += 1
        key = (record.policy, record.rule, record.target, decision.rule, decision.target.label)
        move = moves.get(key)
        if move is None:
            move = moves[key] = Move(*key)
        move.requests += 1
        if len(move.samples) < samples:
            move.samples.append(record.request_id + (f": {record.text}" if record.text else ""))
    result.moves = sorted(moves.values(), key=lambda m: -m.requests)
    return result


def _features(record: RequestRecord) -> RequestFeatures:
    found = record.features
    return RequestFeatures(
        model=found.get("model") or record.policy,
        tenant=found.get("tenant"),
        headers=found.get("headers") or {},
        metadata=found.get("metadata") or {},
        user=found.get("user"),
        text=record.text or "",
        message_count=int(found.get("message_count") or 0),
        token_estimate=int(found.get("token_estimate") or 0),
        embedding=record.embedding,
        request_id=record.request_id,
        conversation=found.get("conversation"),
    )


__all__ = ["Move", "Replay", "replay"]
