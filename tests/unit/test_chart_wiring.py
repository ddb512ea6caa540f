"""How the chart wires the gateway to what surrounds it: Qdrant in the release or outside, Redis's address,
the Prometheus Operator's objects and the Grafana dashboard (deploy/'s own files), the InferencePool, secrets
only by reference, network policies that let only the gateway reach the backends, and the NOTES."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support.chart import (
    CHART,
    EVERYTHING_ON,
    GATEWAY,
    NAMESPACE,
    PRODUCTION_VALUES,
    RELEASE,
    ROOT,
    VARIANTS,
    VLLM,
    container,
    deep_merge,
    env_of,
    gateway_pod,
    pod_specs,
    render,
    vllm_pod,
)

# ---------------------------------------------------------------- Qdrant and Redis


def test_qdrant_in_the_release_or_external() -> None:
    rendered = render()
    assert rendered.gateway_config()["rag"]["store"] == {
        "url": f"http://{RELEASE}-qdrant.{NAMESPACE}.svc.cluster.local:6333"
    }
    qdrant = rendered.one("Service", f"{RELEASE}-qdrant")
    assert 6333 in [p["port"] for p in qdrant["spec"]["ports"]]
    production = render(VARIANTS["production"])
    assert production.gateway_config()["rag"]["store"] == {"url": "https://qdrant.example.internal:6333"}
    assert not production.of_kind("StatefulSet"), "no Qdrant in the release with an external one"
    egress = production.one("NetworkPolicy", GATEWAY)["spec"]["egress"]
    assert {"ports": [{"port": 6333, "protocol": "TCP"}]} in egress, "the gateway may reach the external Qdrant"
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in egress, "and OpenAI"
    embedded = render({"qdrant": {"enabled": False}})
    assert embedded.gateway_config()["rag"]["store"] == {"path": "/var/lib/turnout/qdrant"}
    mounts = {m["mountPath"] for m in container(gateway_pod(embedded), "gateway")["volumeMounts"]}
    assert "/var/lib/turnout" in mounts, "the embedded store needs a writable directory"
    assert "embedded store" in embedded.notes


def test_redis_address_reaches_the_gateway_only_when_set() -> None:
    def redis_env(values: dict[str, Any]) -> dict[str, Any] | None:
        return env_of(container(gateway_pod(render(values)), "gateway")).get("TURNOUT_LIMITS__STORE")

    assert redis_env({}) is None
    in_release = render({"redis": {"enabled": True}})
    service = in_release.one("Service", f"{RELEASE}-redis")
    assert in_release.one("Deployment", f"{RELEASE}-redis")
    assert redis_env({"redis": {"enabled": True}}) == {
        "name": "TURNOUT_LIMITS__STORE",
        "value": f"redis://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:6379/0",
    }
    external = render({"redis": {"url": "redis://cache.internal:6380/1"}}).one("NetworkPolicy", GATEWAY)
    assert {"ports": [{"port": 6380, "protocol": "TCP"}]} in external["spec"]["egress"]
    assert redis_env({"redis": {"url": "redis://cache.internal:6379/1"}}) == {
        "name": "TURNOUT_LIMITS__STORE",
        "value": "redis://cache.internal:6379/1",
    }
    by_secret = redis_env({"redis": {"existingSecret": "redis-url"}})
    assert by_secret is not None
    assert by_secret["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    assert "TURNOUT_LIMITS__STORE" in in_release.notes


# ---------------------------------------------------------------- monitoring


def test_monitoring_objects_only_when_asked() -> None:
    off = render()
    assert not off.of_kind("ServiceMonitor")
    assert not off.of_kind("PrometheusRule")
    assert not [c for c in off.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    on = render(VARIANTS["production"])
    (gateway_monitor, vllm_monitor) = sorted(on.of_kind("ServiceMonitor"), key=lambda m: m["metadata"]["name"])
    service = on.one("Service", GATEWAY)
    assert gateway_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert gateway_monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert gateway_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        vllm_monitor["spec"]["selector"]["matchLabels"].items() <= on.one("Service", VLLM)["metadata"]["labels"].items()
    )
    assert not render(deep_merge(VARIANTS["production"], {"monitoring": {"serviceMonitor": {"vllm": False}}})).of_kind(
        "ServiceMonitor"
    )[1:]


def test_prometheus_rule_and_dashboard_are_deploys_files() -> None:
    on = render(VARIANTS["production"])
    (rule,) = on.of_kind("PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert "{{ $labels.route_kind }}" in json.dumps(rule), "the alerts' own templates must reach Prometheus unrendered"
    (dashboard,) = [c for c in on.of_kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((ROOT / "deploy" / "grafana" / "turnout-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["turnout-dashboard.json"]) == shipped


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("alerts.yml", "deploy/prometheus/alerts.yml"),
        ("turnout-dashboard.json", "deploy/grafana/turnout-dashboard.json"),
    ],
)
def test_chart_copies_of_the_monitoring_files_are_current(copy: str, source: str) -> None:
    assert (CHART / "files" / copy).read_bytes() == (ROOT / source).read_bytes(), (
        f"helm/turnout/files/{copy} differs from {source}: run `make chart-files`"
    )


# ---------------------------------------------------------------- InferencePool


def test_inference_pool_off_by_default() -> None:
    assert not render().of_kind("InferencePool")
    assert not render(VARIANTS["production"]).of_kind("InferencePool")


def test_inference_pool_selects_the_vllm_pods_and_the_gateway_sends_to_it() -> None:
    rendered = render(EVERYTHING_ON)
    pool = rendered.one("InferencePool", VLLM)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    pod_labels = rendered.one("Deployment", VLLM)["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "turnout/model" in pool["spec"]["selector"]["matchLabels"], "one pool per base model"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "epp", "port": {"number": 9002}, "failureMode": "FailClose"}
    egress = rendered.one("NetworkPolicy", GATEWAY)["spec"]["egress"]
    assert {"ports": [{"port": 80, "protocol": "TCP"}]} in egress, "the gateway may reach the inference Gateway"
    config = rendered.gateway_config()["vllm"]
    assert config["url"] == "http://inference-gw.turnout.svc:80"
    assert "discovery" not in config
    assert config["eviction"] == "vllm", "the gateway cannot manage residency behind a picker"


# ---------------------------------------------------------------- secrets


SECRET_WORDS = ("key", "token", "password", "secret")
# Every secret named, on the production values (whose adapter store is a claim, not a sync).
ALL_SECRETS = deep_merge(VARIANTS["production"], {k: v for k, v in EVERYTHING_ON.items() if k != "adapterStore"})


def test_secrets_reach_containers_only_by_reference() -> None:
    rendered = render(ALL_SECRETS)
    assert not rendered.of_kind("Secret")
    gw = env_of(container(gateway_pod(rendered), "gateway"))
    expected = {
        "TURNOUT_AUTH__KEYS": "s-apiKeys",
        "TURNOUT_OPENAI__API_KEY": "s-openai",
        "TURNOUT_VLLM__API_KEY": "s-vllm",
        "TURNOUT_RAG__STORE__API_KEY": "s-qdrant",
    }
    for variable, secret in expected.items():
        assert gw[variable]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "k"}
        assert "value" not in gw[variable]
    for name, pod in pod_specs(rendered):
        for box in pod["containers"] + pod.get("initContainers", []):
            for variable, var in env_of(box).items():
                if any(word in variable.lower() for word in SECRET_WORDS):
                    assert "value" not in var, f"{name}/{box['name']}: {variable} holds a value"


def test_no_secret_value_in_configmaps_or_values_files() -> None:
    def items(node: Any) -> list[tuple[str, Any]]:
        if isinstance(node, dict):
            return [(str(k), v) for k, v in node.items()] + [pair for v in node.values() for pair in items(v)]
        if isinstance(node, list):
            return [pair for v in node for pair in items(v)]
        return []

    config_keys = {key for key, _ in items(render(ALL_SECRETS).gateway_config())}
    assert not config_keys & {"api_key", "key", "key_sha256", "auth", "password", "token"}, config_keys
    secret_like = re.compile(r"(password|token|api_?key)s?$", re.IGNORECASE)
    for path in (CHART / "values.yaml", PRODUCTION_VALUES):
        for key, value in items(yaml.safe_load(path.read_text())):
            if secret_like.search(key):
                assert isinstance(value, dict), f"{path.name}: {key}: {value!r}"
                assert set(value) == {"existingSecret", "key"}, f"{path.name}: {key}: {value!r}"


def test_unset_secrets_render_no_variable() -> None:
    gw = env_of(container(gateway_pod(render()), "gateway"))
    assert not {name for name in gw if name.startswith("TURNOUT_")}, gw
    assert "VLLM_API_KEY" not in env_of(container(vllm_pod(render()), "vllm"))


# ---------------------------------------------------------------- network policies


def test_network_policies_let_only_the_gateway_reach_the_backends() -> None:
    rendered = render(deep_merge(EVERYTHING_ON, {"inferencePool": {"enabled": False}}))
    gateway_labels = rendered.one("Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    backends = {
        f"{RELEASE}-vllm": rendered.one("Deployment", VLLM)["spec"]["template"]["metadata"]["labels"],
        f"{RELEASE}-qdrant": rendered.one("StatefulSet", f"{RELEASE}-qdrant")["spec"]["template"]["metadata"]["labels"],
        f"{RELEASE}-redis": rendered.one("Deployment", f"{RELEASE}-redis")["spec"]["template"]["metadata"]["labels"],
    }
    for policy_name, pod_labels in backends.items():
        policy = rendered.one("NetworkPolicy", policy_name)
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items(), policy_name
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        first = policy["spec"]["ingress"][0]
        assert next(peer["podSelector"]["matchLabels"] for peer in first["from"]).items() <= gateway_labels.items()
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy_name}: a rule open to anyone"
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    production = render(VARIANTS["production"]).one("NetworkPolicy", f"{RELEASE}-vllm")["spec"]["ingress"]
    assert [rule["from"] for rule in production][1] == [scraper], "Prometheus may scrape vLLM when named"
    gateway_policy = rendered.one("NetworkPolicy", GATEWAY)
    assert gateway_policy["spec"]["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    reached = [
        peer["podSelector"]["matchLabels"] for rule in gateway_policy["spec"]["egress"] for peer in rule.get("to", [])
    ]
    for pod_labels in backends.values():
        assert any(selector.items() <= pod_labels.items() for selector in reached), pod_labels


# ---------------------------------------------------------------- NOTES


def test_notes_say_how_to_call_it_and_deploy_an_adapter() -> None:
    notes = render().notes
    assert f"port-forward service/{GATEWAY} 8080:80" in notes
    assert 'OpenAI(base_url="http://127.0.0.1:8080/v1"' in notes
    assert 'model="llama-3.1-8b"' in notes
    assert "adapters:" in notes
    assert "helm upgrade" in notes
    assert 'base_model_name_or_path: "meta-llama/Llama-3.1-8B-Instruct"' in notes
    assert f"{RELEASE}-adapters" in notes
    assert "adapterStore.writer.enabled: true" in notes, "how to get a pod to push from"


def test_notes_say_how_to_push_roll_out_roll_back_and_canary() -> None:
    rendered = render({"adapterStore": {"writer": {"enabled": True}, "watchIntervalSeconds": 5}})
    notes = rendered.notes
    (writer,) = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"] == f"{RELEASE}-adapter-writer"]
    labels = writer["spec"]["template"]["metadata"]["labels"]
    selector = re.search(r"get pod -l (\S+)", notes)
    assert selector is not None, notes
    wanted = dict(pair.split("=") for pair in selector.group(1).split(","))
    assert wanted.items() <= labels.items(), "the NOTES find the writer pod"
    (box,) = writer["spec"]["template"]["spec"]["containers"]
    config_dir = next(m["mountPath"] for m in box["volumeMounts"] if m["name"] == "config")
    assert 'cp ./my-adapter "$POD:/tmp/my-adapter"' in notes
    assert f"turnout adapters push my-adapter /tmp/my-adapter --config {config_dir}/turnout.yaml" in notes
    assert "adapterStore.writer.enabled: true" not in notes
    assert "within 5s" in notes
    assert "turnout adapters rollback my-adapter" in notes
    assert "--no-activate" in notes
    assert "store: my-adapter" in notes
    assert "version: sha256-" in notes
    assert 'target: "adapter:my-adapter-next"' in notes
    synced = render({"adapterStore": {"sync": {"enabled": True, "intervalSeconds": 45}}}).notes
    assert "again every 45s by the adapter-resync" in synced
    assert '--exclude ".aliases/*"' in synced, "versions are uploaded before the names pointing at them"
    assert "kubectl" not in synced.split("2. Deploy an adapter")[1].split("3. Watch it")[0]
