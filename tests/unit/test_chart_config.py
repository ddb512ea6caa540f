"""The turnout.yaml the chart renders is a configuration the gateway accepts, read the way the pod reads it:
``gateway.config.load_config`` on the mounted file, with the environment variables the Deployment sets.

The rendered file uses the fleet keys (``vllm.discovery``, ``vllm.health``, ``vllm.eviction``, and the
adapters' ``pinned``, ``min_replicas``, ``max_replicas``): the first test loads it whole. The second loads it
without those keys, so everything else the chart writes (and every secret's variable name) is checked on its
own. The last serves the rendered adapters from a store laid out as ``turnout adapters push`` leaves it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters.served import resolve
from gateway.adapters.store import AdapterStore
from gateway.config import load_config
from tests.support.chart import PRODUCTION_VALUES, RELEASE, container, env_of, load_values, render

CANARY: dict[str, Any] = {
    "adapters": {
        "formal": {"pinned": True},
        "formal-next": {"store": "formal", "version": "sha256-0123456789ab"},
        "terse": {"min_replicas": 1, "max_replicas": 2},
    },
    "gateway": {
        "config": {
            "policies": {
                "letters": {
                    "rules": [
                        {
                            "name": "canary",
                            "split": {
                                "arms": [
                                    {"weight": 90, "target": "adapter:formal"},
                                    {"weight": 10, "target": "adapter:formal-next"},
                                ]
                            },
                        }
                    ],
                    "default": "base",
                }
            }
        }
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"adapters": {"formal": {"pinned": True}, "terse": {"min_replicas": 1, "max_replicas": 2}}},
    "canary": CANARY,
    "production": load_values(PRODUCTION_VALUES),
    "inference-pool": {
        "inferencePool": {"enabled": True, "url": "http://inference-gw:80", "endpointPickerRef": {"name": "epp"}}
    },
}
FLEET_VLLM_KEYS = ("discovery", "replicas", "health", "eviction")
FLEET_ADAPTER_KEYS = ("pinned", "min_replicas", "max_replicas")
# What each secret's variable holds in a pod (samples), and where the gateway must then find it.
SECRETS = {
    "apiKeys": ("TURNOUT_AUTH__KEYS", '[{"key": "k-acme", "tenant": "acme"}]'),
    "openai": ("TURNOUT_OPENAI__API_KEY", "sk-sample"),
    "vllm": ("TURNOUT_VLLM__API_KEY", "vllm-sample"),
    "qdrant": ("TURNOUT_RAG__STORE__API_KEY", "qdrant-sample"),
}


def write(config: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def without_fleet_keys(config: dict[str, Any]) -> dict[str, Any]:
    trimmed = copy.deepcopy(config)
    vllm = trimmed["vllm"]
    if "discovery" in vllm:  # today's gateway knows one replica, by URL: the Service's name stands for it
        discovery = vllm["discovery"]
        vllm["url"] = f"{discovery['scheme']}://{discovery['dns']}:{discovery['port']}"
    for key in FLEET_VLLM_KEYS:
        vllm.pop(key, None)
    for adapter in trimmed.get("adapters", {}).values():
        for key in FLEET_ADAPTER_KEYS:
            adapter.pop(key, None)
    return trimmed


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_config_is_a_valid_gateway_configuration(variant: str, tmp_path: Path) -> None:
    config = load_config(write(render(VARIANTS[variant]).gateway_config(), tmp_path))
    assert config.server.host == "0.0.0.0"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_config_without_the_fleet_keys_loads_with_the_pods_environment(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = copy.deepcopy(VARIANTS[variant])
    gateway_values = values.setdefault("gateway", {})
    gateway_values["secrets"] = {name: {"existingSecret": f"s-{name}", "key": "k"} for name in SECRETS}
    values["redis"] = {"url": "redis://cache:6379/0"}
    rendered = render(values)
    env = env_of(container(rendered.one("Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"], "gateway"))
    for name, (variable, sample) in SECRETS.items():
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == f"s-{name}"
        monkeypatch.setenv(variable, sample)
    monkeypatch.setenv("TURNOUT_LIMITS__STORE", env["TURNOUT_LIMITS__STORE"]["value"])

    config = load_config(write(without_fleet_keys(rendered.gateway_config()), tmp_path))

    assert [(key.tenant, key.key and key.key.get_secret_value()) for key in config.auth.keys] == [("acme", "k-acme")]
    assert config.limits.store == "redis://cache:6379/0"  # the quotas' Redis, from the chart's redis.url
    assert config.openai.api_key is not None
    assert config.openai.api_key.get_secret_value() == "sk-sample"
    assert config.vllm.api_key is not None
    assert config.vllm.api_key.get_secret_value() == "vllm-sample"
    assert config.rag.store.api_key is not None
    assert config.rag.store.api_key.get_secret_value() == "qdrant-sample"
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    assert config.vllm.model == "llama-3.1-8b"
    assert "meta-llama/Llama-3.1-8B-Instruct" in config.base_model.aliases
    assert config.rag.store.url is not None
    assert config.adapter_store.path == Path("/adapters")
    assert config.adapter_store.watch_interval_s == 2
    declared = VARIANTS[variant].get("adapters", {})
    assert set(config.adapters) == set(declared)
    for name, adapter in config.adapters.items():
        assert (adapter.path, adapter.store) == (None, declared[name].get("store", name)), "served from the store"
        assert adapter.version == declared[name].get("version")
    if variant == "production":
        assert set(config.policies) == {"support-bot"}
        assert set(config.rag.collections) == {"handbook"}


def test_rendered_adapters_are_served_from_the_versions_in_the_store(tmp_path: Path) -> None:
    """The store at the mount path, as a push leaves it: formal points at its second version, formal-next stays
    on the first (the canary's fixed version), terse has none yet and is not served until one is pushed."""
    root = tmp_path / "store"
    store = AdapterStore(root)
    versions = []
    for weights in (b"first", b"second"):
        source = tmp_path / weights.decode()
        source.mkdir()
        (source / "adapter_model.safetensors").write_bytes(weights)
        version, _ = store.push("formal", source)
        store.activate("formal", version)
        versions.append(version)
    values = copy.deepcopy(CANARY)
    values["adapters"]["formal-next"]["version"] = versions[0]
    values["adapterStore"] = {"mountPath": str(root)}
    config = load_config(write(render(values).gateway_config(), tmp_path))

    served = resolve(config.adapters, config.adapter_store)

    assert served["formal"].path == root / f"formal@{versions[1]}"
    assert served["formal"].vllm_name("formal") == f"formal@{versions[1]}"
    assert served["formal-next"].path == root / f"formal@{versions[0]}"
    assert served["formal-next"].vllm_name("formal-next") == f"formal@{versions[0]}"
    assert served["terse"].path is None
