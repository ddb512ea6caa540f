"""Building the routing table from the configuration: direct names, compiled policies, intents.

Used at start-up, on reload, and by ``turnout route explain``; intent examples are embedded here
(in batches, through the shared embedder's cache, so a reload re-embeds only what changed).
"""

from __future__ import annotations

from gateway.config import TurnoutConfig
from gateway.embeddings import Embedder
from routing import RoutingTable, Target, TargetKind
from routing.conditions import intents_used


def policies_use_intents(config: TurnoutConfig) -> bool:
    return any(intents_used(rule.when) for policy in config.policies.values() for rule in policy.rules)


def policies_use_shadows(config: TurnoutConfig) -> bool:
    return any(
        policy.shadow is not None or any(rule.shadow is not None for rule in policy.rules)
        for policy in config.policies.values()
    )


def policies_use_openai(config: TurnoutConfig) -> bool:
    return any(target.openai for policy in config.policies.values() for _, target in policy.targets())


def openai_models(config: TurnoutConfig) -> list[str]:
    """Every OpenAI model id the policies name, each once."""
    found = (target.openai for policy in config.policies.values() for _, target in policy.targets())
    return sorted({model for model in found if model is not None})


def direct_targets(config: TurnoutConfig) -> dict[str, Target]:
    targets = {config.base_model_name: Target(TargetKind.BASE, config.vllm.model)}
    targets.update({name: Target(TargetKind.ADAPTER, name) for name in config.adapters})
    return targets


async def build_routing_table(config: TurnoutConfig, embedder: Embedder | None) -> RoutingTable:
    """The table for ``config``; ``embedder`` must be loaded when the policies use intents."""
    intents = None
    if policies_use_intents(config):
        if embedder is None:
            raise ValueError("the policies use intents, but no embedding model is loaded")
        from routing.intents import IntentIndex

        names = list(config.intents)
        texts = [text for name in names for text in config.intents[name].examples]
        vectors = await embedder.embed_texts(texts)
        examples: dict[str, list[list[float]]] = {}
        position = 0
        for name in names:
            count = len(config.intents[name].examples)
            examples[name] = vectors[position : position + count]
            position += count
        intents = IntentIndex(examples, {name: spec.threshold for name, spec in config.intents.items()})
    return RoutingTable.build(direct_targets(config), config.policies, config.vllm.model, intents)
