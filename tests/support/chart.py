"""Rendering and validating the Helm chart (helm/turnout) without a helm binary or a cluster.

Helm's own Go SDK renders and lints through ``helm-python-sdk`` (ctypes, no network: the Qdrant chart is
vendored under ``charts/``). Built-in kinds are validated with ``kubernetes-validate --strict`` against one
Kubernetes version, :data:`KUBERNETES_VERSION`. The CRDs the chart renders (ServiceMonitor, PrometheusRule,
InferencePool) are not in those schemas: they are validated against the ``openAPIV3Schema`` of each CRD as
its project publishes it (``tests/support/crds``, descriptions removed), made strict the way
``kubectl --validate=strict`` is: an unknown field is an error wherever the schema lists the fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "turnout"
PRODUCTION_VALUES = CHART / "values-production.yaml"
CRDS = Path(__file__).resolve().parent / "crds"
# A version every major managed Kubernetes service runs in late 2026; the chart asks for >= 1.29.
KUBERNETES_VERSION = "1.34.0"
RELEASE = "turnout"
NAMESPACE = "turnout"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """What ``helm template`` prints, by template path, and its objects."""

    files: Mapping[str, str]
    objects: tuple[Manifest, ...]

    @property
    def notes(self) -> str:
        return self.files[f"{CHART.name}/templates/NOTES.txt"]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> Manifest:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name!r}, found {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        )
        return found[0]

    def ours(self) -> list[Manifest]:
        """The objects of this chart, not of its subcharts."""
        return [
            obj
            for obj in self.objects
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "turnout"
        ]

    def gateway_config(self) -> dict[str, Any]:
        config = yaml.safe_load(self.one("ConfigMap", f"{RELEASE}-gateway")["data"]["turnout.yaml"])
        assert isinstance(config, dict)
        return config


def load_values(path: Path = PRODUCTION_VALUES) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict)
    return values


def render(values: Mapping[str, Any] | None = None) -> Rendered:
    """Render the chart with ``values`` over its defaults, as ``helm template turnout helm/turnout -n turnout``."""
    return _render(json.dumps(values or {}, sort_keys=True))


@cache
def _render(values_json: str) -> Rendered:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
    objects = tuple(
        obj
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for obj in yaml.safe_load_all(text)
        if obj
    )
    return Rendered(files=files, objects=objects)


def refusal(values: Mapping[str, Any]) -> str:
    """The message Helm gives when it refuses ``values`` (schema or a template's ``fail``); fails when it renders."""
    try:
        render(values)
    except helm.HelmError as exc:
        return str(exc)
    raise AssertionError(f"the chart rendered values it should refuse: {values}")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values files: mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------- validation

BUILTIN_GROUPS = {"v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1"}


def validation_problem(obj: Manifest) -> str | None:
    """Why the object would be refused (built-in kinds strictly, CRDs by their published schema), or None."""
    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") in BUILTIN_GROUPS:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"
        return None
    schema = crd_schema(obj.get("apiVersion", ""), obj.get("kind", ""))
    if schema is None:
        return f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}: add its CRD to {CRDS}"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        return "; ".join(f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    return None


@cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        found[(f"{crd['group']}/{crd['version']}", crd["kind"])] = _strict(crd["schema"])
    return found


def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    return _crds().get((api_version, kind))


def _strict(node: Any) -> Any:
    """An openAPIV3Schema where every object that lists its fields refuses others (as strict validation does),
    with ``metadata`` held to a name and string labels (the API server's part, not the CRD's)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
    if "metadata" in out.get("properties", {}) and out["properties"]["metadata"] == {"type": "object"}:
        out["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    return out


# ---------------------------------------------------------------- pods


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and StatefulSet."""
    for obj in rendered.objects:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def container(pod: Mapping[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name!r} in {[c['name'] for c in pod['containers']]}"
    result: dict[str, Any] = found[0]
    return result


def env_of(box: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in box.get("env", [])}


# ---------------------------------------------------------------- the objects tests look at

GATEWAY = f"{RELEASE}-gateway"
VLLM = f"{RELEASE}-vllm-llama-3-1-8b"
EVERYTHING_ON: dict[str, Any] = {
    "gateway": {
        "secrets": {
            name: {"existingSecret": f"s-{name}", "key": "k"} for name in ("apiKeys", "openai", "vllm", "qdrant")
        }
    },
    "redis": {"enabled": True},
    "inferencePool": {
        "enabled": True,
        "url": "http://inference-gw.turnout.svc:80",
        "endpointPickerRef": {"name": "epp"},
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "adapterStore": {"sync": {"enabled": True}},
    "vllm": {"hfToken": {"existingSecret": "hf", "key": "token"}},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": load_values(PRODUCTION_VALUES),
    "everything-on": EVERYTHING_ON,
}


def gateway_pod(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.one("Deployment", GATEWAY)["spec"]["template"]["spec"]
    return pod


def vllm_pod(rendered: Rendered, name: str = VLLM) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.one("Deployment", name)["spec"]["template"]["spec"]
    return pod
