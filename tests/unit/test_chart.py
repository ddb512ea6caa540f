"""The Helm chart (helm/turnout): lint, render with the default and the production-like values, validate every
manifest, and check what it deploys: probes, GPUs, vLLM's LoRA flags and resolver, the read-only adapter
store, the adapter writer that pushes into it and the sync that follows object storage, the config checksum,
how the gateway finds vLLM, monitoring and InferencePool on and off, and secrets only by reference. Qdrant,
Redis, monitoring, InferencePool, secrets and network policies are in test_chart_wiring.py; refused values in
test_chart_values.py; the rendered turnout.yaml against the gateway's own schema in test_chart_config.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

import gateway
from tests.support.chart import (
    CHART,
    EVERYTHING_ON,
    GATEWAY,
    KUBERNETES_VERSION,
    NAMESPACE,
    PRODUCTION_VALUES,
    RELEASE,
    VARIANTS,
    VLLM,
    Rendered,
    container,
    deep_merge,
    env_of,
    gateway_pod,
    load_values,
    pod_specs,
    render,
    validation_problem,
    vllm_pod,
)


def checksum(rendered: Rendered) -> str:
    value: str = rendered.one("Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


# ---------------------------------------------------------------- lint, render, validate


@pytest.mark.parametrize("variant", ["default", "production"])
def test_chart_lints_without_warnings(variant: str) -> None:
    report = helm.lint(str(CHART), VARIANTS[variant] or None, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious, serious


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_manifest_validates(variant: str) -> None:
    rendered = render(VARIANTS[variant])
    assert len(rendered.objects) >= 10
    problems = [problem for obj in rendered.objects if (problem := validation_problem(obj))]
    assert not problems, "\n".join(problems)


def test_validation_catches_what_it_should() -> None:
    """The validators used above do refuse: an unknown field in a built-in kind and in each CRD."""
    rendered = render(EVERYTHING_ON)
    deployment = json.loads(json.dumps(rendered.one("Deployment", GATEWAY)))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert "livenesProbe" in str(validation_problem(deployment))
    for kind in ("ServiceMonitor", "PrometheusRule", "InferencePool"):
        obj = json.loads(json.dumps(rendered.of_kind(kind)[0]))
        obj["spec"]["selectr"] = {}
        assert "selectr" in str(validation_problem(obj)), kind
    pool = json.loads(json.dumps(rendered.of_kind("InferencePool")[0]))
    del pool["spec"]["targetPorts"]
    assert "targetPorts" in str(validation_problem(pool))
    assert "no schema" in str(
        validation_problem({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}})
    )


def test_default_values_render_the_whole_stack() -> None:
    rendered = render()
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects}
    for expected in [
        ("Deployment", GATEWAY),
        ("Service", GATEWAY),
        ("ConfigMap", GATEWAY),
        ("ServiceAccount", GATEWAY),
        ("PodDisruptionBudget", GATEWAY),
        ("Deployment", VLLM),
        ("Service", VLLM),
        ("PersistentVolumeClaim", f"{RELEASE}-adapters"),
        ("StatefulSet", f"{RELEASE}-qdrant"),
        ("Service", f"{RELEASE}-qdrant"),
        ("NetworkPolicy", GATEWAY),
        ("NetworkPolicy", f"{RELEASE}-vllm"),
    ]:
        assert expected in kinds, f"{expected} missing from {sorted(kinds)}"
    for absent in ("HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "InferencePool", "Secret"):
        assert not rendered.of_kind(absent), absent


def test_every_object_of_the_chart_carries_the_standard_labels() -> None:
    rendered = render(EVERYTHING_ON)
    ours = rendered.ours()
    assert len(ours) >= 15
    for obj in ours:
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "turnout", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/version"] == gateway.__version__, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert obj["metadata"]["namespace"] == NAMESPACE, where
    for name, _pod in pod_specs(rendered):
        workload = next(
            o for o in rendered.objects if o["metadata"]["name"] == name and o["kind"] in {"Deployment", "StatefulSet"}
        )
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= template_labels.items(), name
        if workload in ours:
            assert "app.kubernetes.io/component" in template_labels, name


def test_chart_versions_follow_the_gateway_and_the_vendored_qdrant() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == gateway.__version__
    qdrant = yaml.safe_load((CHART / "charts" / "qdrant" / "Chart.yaml").read_text())
    (dependency,) = chart["dependencies"]
    assert (dependency["name"], dependency["version"], dependency["condition"]) == (
        "qdrant",
        qdrant["version"],
        "qdrant.enabled",
    )


# ---------------------------------------------------------------- the gateway


def test_gateway_probes_resources_and_locked_down_security() -> None:
    pod = gateway_pod(render())
    gw = container(pod, "gateway")
    assert gw["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gw["startupProbe"]["httpGet"]["path"] == "/health"
    assert gw["args"] == ["serve", "--config", "/etc/turnout/turnout.yaml"]
    assert gw["image"] == f"ghcr.io/turnout/turnout:{gateway.__version__}"
    assert gw["resources"]["requests"]
    assert gw["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert gw["securityContext"]["readOnlyRootFilesystem"] is True
    assert gw["securityContext"]["allowPrivilegeEscalation"] is False
    assert gw["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in gw["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "the read-only root needs a writable /tmp"
    assert mounts["/etc/turnout"]["readOnly"] is True
    assert volumes[mounts["/etc/turnout"]["name"]]["configMap"]["name"] == GATEWAY
    assert env_of(gw)["HOME"]["value"] == "/tmp"
    assert pod["automountServiceAccountToken"] is False


def test_hpa_and_pdb() -> None:
    rendered = render({"gateway": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7}}})
    hpa = rendered.one("HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in rendered.one("Deployment", GATEWAY)["spec"], "the HPA owns the replica count"
    pdb = rendered.one("PodDisruptionBudget", GATEWAY)
    assert (
        pdb["spec"]["selector"]["matchLabels"] == rendered.one("Deployment", GATEWAY)["spec"]["selector"]["matchLabels"]
    )
    assert not render({"gateway": {"podDisruptionBudget": {"enabled": False}}}).of_kind("PodDisruptionBudget")


def test_config_checksum_rolls_the_pods_when_the_config_changes_and_only_then() -> None:
    base = render()
    config = base.one("ConfigMap", GATEWAY)["data"]["turnout.yaml"]
    assert checksum(base) == hashlib.sha256(config.removesuffix("\n").encode()).hexdigest()
    changed = render({"gateway": {"config": {"server": {"log_level": "debug"}}}})
    assert checksum(changed) != checksum(base)
    assert render({"adapters": {"formal": {"pinned": True}}}).gateway_config()["adapters"]["formal"]["pinned"] is True
    assert checksum(render({"adapters": {"formal": {"pinned": True}}})) != checksum(base)
    unrelated = render({"gateway": {"resources": {"requests": {"cpu": "2"}}}})
    assert checksum(unrelated) == checksum(base)


def test_gateway_discovers_vllm_through_the_models_headless_service() -> None:
    rendered = render()
    config = rendered.gateway_config()
    service = rendered.one("Service", VLLM)
    assert service["spec"]["clusterIP"] == "None"
    assert config["vllm"]["discovery"] == {
        "dns": f"{VLLM}.{NAMESPACE}.svc.cluster.local",
        "port": 8000,
        "scheme": "http",
        "interval_s": 10,
    }
    assert "url" not in config["vllm"]
    assert "replicas" not in config["vllm"]
    pod_labels = rendered.one("Deployment", VLLM)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == config["vllm"]["discovery"]["port"]
    assert config["vllm"]["model"] == "llama-3.1-8b"
    assert config["vllm"]["max_lora_rank"] == 16
    assert config["vllm"]["max_resident"] == 8
    assert config["vllm"]["health"] == {"interval_s": 5, "timeout_s": 2, "eject_after": 3}
    assert config["server"] == {"host": "0.0.0.0", "port": 8080}
    assert config["base_model"]["aliases"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert (
        render({"clusterDomain": "corp.internal"})
        .gateway_config()["vllm"]["discovery"]["dns"]
        .endswith(".svc.corp.internal")
    )


@pytest.mark.parametrize(
    ("values", "eviction"),
    [
        ({}, "gateway"),
        ({"gateway": {"replicas": 2}}, "vllm"),
        ({"gateway": {"autoscaling": {"enabled": True}}}, "vllm"),
        ({"gateway": {"fleet": {"eviction": "vllm"}}}, "vllm"),
        (VARIANTS["production"], "vllm"),
    ],
)
def test_several_gateways_leave_eviction_to_vllm(values: dict[str, Any], eviction: str) -> None:
    assert render(values).gateway_config()["vllm"]["eviction"] == eviction


def test_gateway_model_picks_among_several_base_models() -> None:
    models = [
        {
            "name": "small",
            "source": "org/small",
            "replicas": 1,
            "gpus": 1,
            "maxLoras": 2,
            "maxCpuLoras": 4,
            "maxLoraRank": 8,
        },
        {
            "name": "big",
            "servedName": "big-70b",
            "source": "org/big",
            "replicas": 2,
            "gpus": 4,
            "maxLoras": 4,
            "maxCpuLoras": 8,
            "maxLoraRank": 64,
        },
    ]
    rendered = render({"vllm": {"models": models}, "gateway": {"model": "big"}})
    assert {d["metadata"]["name"] for d in rendered.of_kind("Deployment")} == {
        GATEWAY,
        f"{RELEASE}-vllm-small",
        f"{RELEASE}-vllm-big",
    }
    assert {s["metadata"]["name"] for s in rendered.of_kind("Service") if s["spec"].get("clusterIP") == "None"} >= {
        f"{RELEASE}-vllm-small",
        f"{RELEASE}-vllm-big",
    }
    config = rendered.gateway_config()["vllm"]
    assert (config["model"], config["max_lora_rank"], config["discovery"]["dns"].split(".")[0]) == (
        "big-70b",
        64,
        f"{RELEASE}-vllm-big",
    )
    big = container(vllm_pod(rendered, f"{RELEASE}-vllm-big"), "vllm")
    assert "--tensor-parallel-size=4" in big["args"]
    assert big["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert render({"vllm": {"models": models}}).gateway_config()["vllm"]["model"] == "small"


def test_adapters_become_the_gateways_adapters_section_in_the_store() -> None:
    adapters = {
        "formal": {"description": "Formal", "pinned": True},
        "terse": {"min_replicas": 1, "max_replicas": 2},
        "formal-next": {"store": "formal", "version": "sha256-0123456789ab"},
    }
    config = render({"adapters": adapters}).gateway_config()
    assert config["adapters"] == {
        "formal": {"store": "formal", "description": "Formal", "pinned": True},
        "terse": {"store": "terse", "min_replicas": 1, "max_replicas": 2},
        "formal-next": {"store": "formal", "version": "sha256-0123456789ab"},
    }
    assert config["adapter_store"] == {"path": "/adapters", "watch_interval_s": 2}
    moved = render(
        {"adapters": {"formal": None}, "adapterStore": {"mountPath": "/srv/lora", "watchIntervalSeconds": 0.5}}
    ).gateway_config()
    assert moved["adapter_store"] == {"path": "/srv/lora", "watch_interval_s": 0.5}
    assert moved["adapters"] == {"formal": {"store": "formal"}}
    mount = adapter_mount(container(gateway_pod(render({"adapterStore": {"mountPath": "/srv/lora"}})), "gateway"))
    assert mount["mountPath"] == "/srv/lora", "the gateway reads the store where its config says it is"


def test_user_config_passes_through_under_the_keys_the_chart_owns() -> None:
    production = render(VARIANTS["production"]).gateway_config()
    values = load_values(PRODUCTION_VALUES)["gateway"]["config"]
    assert production["policies"] == values["policies"]
    assert production["costs"] == values["costs"]
    assert production["rag"]["collections"] == values["rag"]["collections"]
    assert production["vllm"]["read_timeout_s"] == 120
    assert production["server"]["log_level"] == "info"
    assert production["server"]["host"] == "0.0.0.0"


# ---------------------------------------------------------------- vLLM


def test_vllm_runs_the_official_image_with_lora_flags_gpus_and_long_startup() -> None:
    rendered = render(VARIANTS["production"])
    deployment = rendered.one("Deployment", VLLM)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, (
        "no spare GPU needed"
    )
    pod = deployment["spec"]["template"]["spec"]
    vllm = container(pod, "vllm")
    assert vllm["image"].startswith("docker.io/vllm/vllm-openai:")
    assert vllm["command"] == ["vllm", "serve"]
    args = vllm["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    for flag in (
        "--enable-lora",
        "--max-loras=4",
        "--max-cpu-loras=8",
        "--max-lora-rank=16",
        "--served-model-name=llama-3.1-8b",
        "--port=8000",
        "--host=0.0.0.0",
    ):
        assert flag in args, (flag, args)
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    startup = vllm["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "an 8B model takes minutes to load"
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    env = env_of(vllm)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["VLLM_PLUGINS"]["value"] == "lora_filesystem_resolver"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"]["value"] == "/adapters"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "turnout-hf", "key": "token"}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "turnout-vllm", "key": "api-key"}


def adapter_mount(box: dict[str, Any]) -> dict[str, Any]:
    (mount,) = [m for m in box["volumeMounts"] if m["name"] == "adapters"]
    assert isinstance(mount, dict)
    return mount


@pytest.mark.parametrize(
    ("store", "volume"),
    [
        ({}, {"persistentVolumeClaim": {"claimName": f"{RELEASE}-adapters", "readOnly": True}}),
        ({"existingClaim": "shared"}, {"persistentVolumeClaim": {"claimName": "shared", "readOnly": True}}),
        ({"sync": {"enabled": True}}, {"emptyDir": {"sizeLimit": "10Gi"}}),
    ],
)
def test_adapter_store_is_mounted_read_only_where_the_resolver_looks(
    store: dict[str, Any], volume: dict[str, Any]
) -> None:
    rendered = render({"adapterStore": store})
    for pod, name in ((vllm_pod(rendered), "vllm"), (gateway_pod(rendered), "gateway")):
        mount = adapter_mount(container(pod, name))
        assert mount == {"name": "adapters", "mountPath": "/adapters", "readOnly": True}
        (declared,) = [v for v in pod["volumes"] if v["name"] == "adapters"]
        assert {k: v for k, v in declared.items() if k != "name"} == volume
        if store.get("sync"):
            (init,) = pod["initContainers"]
            assert init["name"] == "adapter-sync"
            assert adapter_mount(init).get("readOnly") is not True, "the sync writes the store"
            assert env_of(init)["STORE"]["value"] == "/adapters"
            assert init["image"] == "docker.io/amazon/aws-cli:2.27.0"
        else:
            assert "initContainers" not in pod
    claims = rendered.of_kind("PersistentVolumeClaim")
    assert [c["metadata"]["name"] for c in claims] == ([f"{RELEASE}-adapters"] if not store else [])


def test_adapter_sync_image_and_command_are_configurable() -> None:
    sync = {
        "enabled": True,
        "image": {"repository": "rclone/rclone", "tag": "1.70"},
        "command": ["rclone", "sync", "r2:adapters", "/adapters"],
    }
    (init,) = vllm_pod(render({"adapterStore": {"sync": sync}}))["initContainers"]
    assert init["image"] == "rclone/rclone:1.70"
    assert init["command"] == sync["command"]


# ---------------------------------------------------------------- pushing: the adapter writer, the sync sidecar

WRITER = f"{RELEASE}-adapter-writer"


def writer_pod(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.one("Deployment", WRITER)["spec"]["template"]["spec"]
    return pod


def test_adapter_writer_only_when_enabled() -> None:
    for values in ({}, {"adapterStore": {"existingClaim": "shared"}}):
        rendered = render(values)
        assert WRITER not in [obj["metadata"]["name"] for obj in rendered.objects]


@pytest.mark.parametrize(("store", "claim"), [({}, f"{RELEASE}-adapters"), ({"existingClaim": "shared"}, "shared")])
def test_adapter_writer_mounts_the_store_read_write_and_the_gateways_config(store: dict[str, Any], claim: str) -> None:
    rendered = render({"adapterStore": deep_merge(store, {"writer": {"enabled": True}})})
    deployment = rendered.one("Deployment", WRITER)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "a ReadWriteOnce claim cannot be shared"
    pod = writer_pod(rendered)
    (writer,) = pod["containers"]
    gw_pod = gateway_pod(rendered)
    gw = container(gw_pod, "gateway")
    assert writer["image"] == gw["image"], "the gateway's image: it has the turnout command"
    assert writer["command"] == ["sleep", "infinity"]
    assert "ports" not in writer
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in writer["volumeMounts"]}
    store_mount = mounts["/adapters"]
    assert not store_mount.get("readOnly"), "the writer pushes into the store"
    assert volumes[store_mount["name"]]["persistentVolumeClaim"] == {"claimName": claim}
    (gateway_config_mount,) = [m for m in gw["volumeMounts"] if m["name"] == "config"]
    config_mount = mounts[gateway_config_mount["mountPath"]]
    assert config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == GATEWAY
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "kubectl cp writes the adapter into /tmp"
    assert pod["securityContext"] == gw_pod["securityContext"], "what it writes, the gateway's user can read"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert writer["securityContext"]["readOnlyRootFilesystem"] is True
    assert writer["securityContext"]["allowPrivilegeEscalation"] is False
    assert env_of(writer)["HOME"]["value"] == "/tmp"
    assert pod["automountServiceAccountToken"] is False
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == checksum(rendered), "a new turnout.yaml reaches the writer too"
    (policy,) = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"] == WRITER]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert not policy["spec"].get("ingress"), "nothing in"
    assert not policy["spec"].get("egress"), "nothing out"
    for other in rendered.of_kind("NetworkPolicy"):
        if other is not policy:
            assert not other["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), other["metadata"]
    problems = [problem for obj in rendered.objects if (problem := validation_problem(obj))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("interval", "expected"), [(None, "30"), (120, "120")])
def test_adapter_sync_repeats_beside_every_server(interval: int | None, expected: str) -> None:
    sync: dict[str, Any] = {"enabled": True}
    if interval is not None:
        sync["intervalSeconds"] = interval
    rendered = render({"adapterStore": {"sync": sync}})
    for pod, server in ((vllm_pod(rendered), "vllm"), (gateway_pod(rendered), "gateway")):
        assert [c["name"] for c in pod["containers"]] == [server, "adapter-resync"]
        (init,) = pod["initContainers"]
        loop = container(pod, "adapter-resync")
        assert loop["image"] == init["image"]
        assert loop["command"][:2] == ["/bin/sh", "-c"]
        assert loop["command"][4:] == init["command"], "the same sync command as the init container"
        assert env_of(loop)["SYNC_INTERVAL_SECONDS"]["value"] == expected
        assert env_of(loop)["STORE"] == env_of(init)["STORE"]
        assert adapter_mount(loop) == adapter_mount(init), "it writes the same store"
        assert loop["resources"]["requests"]["cpu"], "the gateway's autoscaler needs every container's request"
    problems = [problem for obj in rendered.objects if (problem := validation_problem(obj))]
    assert not problems, "\n".join(problems)


def test_adapter_sync_loop_runs_the_command_again_survives_failures_and_stops_on_sigterm(tmp_path: Path) -> None:
    loop = container(gateway_pod(render({"adapterStore": {"sync": {"enabled": True}}})), "adapter-resync")
    runs = tmp_path / "runs"
    command = [*loop["command"][:4], "/bin/sh", "-c", f'echo "$STORE" >> {runs}; exit 3']
    env = {"PATH": os.environ["PATH"], "STORE": "/adapters", "SYNC_INTERVAL_SECONDS": "0.05"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(runs.read_text().splitlines() if runs.exists() else []) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=5)
    assert process.returncode == 0
    assert runs.read_text().splitlines()[:3] == ["/adapters"] * 3, "run again after a failed run"
    assert "adapter sync failed (exit status 3)" in stderr
