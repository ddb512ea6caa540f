"""Values the chart refuses, and what it says: values.schema.json for the shape of each value (a wrong type,
an unknown key, a missing required value, a secret's value where only a reference belongs), the templates'
own checks for what a schema cannot say (a combination of values)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.chart import refusal

MODEL: dict[str, Any] = {
    "name": "m",
    "source": "org/m",
    "replicas": 1,
    "gpus": 1,
    "maxLoras": 2,
    "maxCpuLoras": 4,
    "maxLoraRank": 8,
}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # a wrong type
        ({"gateway": {"replicas": "two"}}, "at '/gateway/replicas': got string, want integer"),
        ({"vllm": {"models": [dict(MODEL, gpus=0.5)]}}, "at '/vllm/models/0/gpus': got number, want integer"),
        (
            {"monitoring": {"serviceMonitor": {"enabled": "yes"}}},
            "at '/monitoring/serviceMonitor/enabled': got string, want boolean",
        ),
        ({"gateway": {"fleet": {"eviction": "lru"}}}, "at '/gateway/fleet/eviction'"),
        # an unknown key (a typo never falls back to a default silently)
        ({"gateway": {"replicaCount": 2}}, "at '/gateway': additional properties 'replicaCount' not allowed"),
        (
            {"vllm": {"models": [dict(MODEL, maxLora=4)]}},
            "at '/vllm/models/0': additional properties 'maxLora' not allowed",
        ),
        (
            {"adapters": {"formal": {"pinned": True, "replicas": 2}}},
            "at '/adapters/formal': additional properties 'replicas' not allowed",
        ),
        ({"monitoring": {"servicemonitor": {"enabled": True}}}, "additional properties 'servicemonitor' not allowed"),
        # a missing required value
        (
            {"vllm": {"models": [{k: v for k, v in MODEL.items() if k != "source"}]}},
            "at '/vllm/models/0': missing property 'source'",
        ),
        ({"vllm": {"models": []}}, "at '/vllm/models': minItems"),
        (
            {"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp"}}},
            "at '/inferencePool/url': minLength",
        ),
        (
            {"inferencePool": {"enabled": True, "url": "http://gw"}},
            "at '/inferencePool/endpointPickerRef/name': minLength",
        ),
        (
            {"gateway": {"secrets": {"openai": {"existingSecret": "openai", "key": ""}}}},
            "at '/gateway/secrets/openai/key': minLength",
        ),
        # values that break Kubernetes' or the gateway's naming rules
        (
            {"vllm": {"models": [dict(MODEL, name="Llama.8B")]}},
            "at '/vllm/models/0/name': 'Llama.8B' does not match pattern",
        ),
        ({"adapters": {"bad name!": {}}}, "at '/adapters': additional properties 'bad name!' not allowed"),
        (
            {"adapters": {"formal-next": {"store": "formal", "version": "0123456789ab"}}},
            "at '/adapters/formal-next/version': '0123456789ab' does not match pattern",
        ),
        (
            {"adapters": {"formal-next": {"store": "formal", "version": "sha256-0123456789AB"}}},
            "at '/adapters/formal-next/version'",
        ),
        ({"adapters": {"formal": {"store": "bad name!"}}}, "at '/adapters/formal/store'"),
        (
            {"adapters": {"formal": {"path": "/adapters/formal"}}},
            "at '/adapters/formal': additional properties 'path' not allowed",
        ),
        (
            {"adapterStore": {"writer": {"enabled": True, "replicas": 2}}},
            "at '/adapterStore/writer': additional properties 'replicas' not allowed",
        ),
        ({"adapterStore": {"watchIntervalSeconds": 0}}, "at '/adapterStore/watchIntervalSeconds'"),
        (
            {"adapterStore": {"sync": {"enabled": True, "intervalSeconds": 0}}},
            "at '/adapterStore/sync/intervalSeconds'",
        ),
        # a secret's value, or a key the chart owns, in the gateway's configuration
        (
            {"gateway": {"config": {"openai": {"api_key": "sk-live"}}}},
            "at '/gateway/config/openai': additional properties 'api_key' not allowed",
        ),
        (
            {"gateway": {"config": {"auth": {"keys": [{"key": "k"}]}}}},
            "at '/gateway/config': additional properties 'auth' not allowed",
        ),
        (
            {"gateway": {"config": {"vllm": {"url": "http://x:8000"}}}},
            "at '/gateway/config/vllm': additional properties 'url' not allowed",
        ),
        (
            {"gateway": {"config": {"server": {"port": 9000}}}},
            "at '/gateway/config/server': additional properties 'port' not allowed",
        ),
        (
            {"gateway": {"config": {"rag": {"store": {"url": "http://q"}}}}},
            "at '/gateway/config/rag': additional properties 'store' not allowed",
        ),
        ({"qdrant": {"apiKey": "s3cret"}}, "at '/qdrant/apiKey'"),
    ],
)
def test_schema_refuses_with_the_key_and_the_problem(values: dict[str, Any], message: str) -> None:
    said = refusal(values)
    assert "values don't meet the specifications of the schema" in said
    assert message in said, said


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"vllm": {"models": [dict(MODEL, maxLoras=8, maxCpuLoras=4)]}},
            "vllm.models[0]: maxCpuLoras (4) must be at least maxLoras (8), or vLLM refuses to start",
        ),
        ({"vllm": {"models": [MODEL, MODEL]}}, 'vllm.models[1].name: "m" is listed twice'),
        ({"gateway": {"model": "other"}}, 'gateway.model: "other" is not one of vllm.models[].name (llama-3-1-8b)'),
        (
            {"gateway": {"replicas": 3, "fleet": {"eviction": "gateway"}}},
            'gateway.fleet.eviction: "gateway" lets each gateway unload',
        ),
        (
            {"gateway": {"autoscaling": {"enabled": True}}, "qdrant": {"enabled": False}},
            "several gateway replicas need one shared Qdrant",
        ),
        ({"redis": {"enabled": True, "url": "redis://r:6379"}}, "redis: give either redis.enabled"),
        (
            {"adapterStore": {"existingClaim": "a", "sync": {"enabled": True}}},
            "adapterStore: give either existingClaim or sync.enabled",
        ),
        (
            {"adapterStore": {"writer": {"enabled": True}, "sync": {"enabled": True}}},
            "adapterStore: writer.enabled pushes into a claim, but with sync.enabled every pod copies the store "
            "from object storage",
        ),
        (
            {"fullnameOverride": "x" * 30, "vllm": {"models": [dict(MODEL, name="a" * 40)]}},
            "longer than Kubernetes' 63 characters: shorten the model's name",
        ),
    ],
)
def test_templates_refuse_combinations_with_a_sentence(values: dict[str, Any], message: str) -> None:
    said = refusal(values)
    assert message in said, said
