"""The sections about what serves requests: the vLLM replicas (where, health, eviction), the base model, the
adapters and the adapter store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from gateway.config.fields import HttpUrl, ModelName, Section


class DiscoveryConfig(Section):
    dns: str = Field(
        description="A DNS name whose every address is a vLLM replica, re-resolved every interval_s: a Kubernetes "
        "headless Service (its-name.its-namespace.svc.cluster.local)."
    )
    port: int = Field(8000, ge=1, le=65535, description="The port vLLM listens on at every address.")
    scheme: Literal["http", "https"] = Field("http", description="How to reach every address.")
    interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between resolutions. A failed resolution keeps the replicas last known (and says so "
        "in the log and in turnout_discovery_failures_total); a replica that leaves the set is drained.",
    )

    @field_validator("dns")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?\.?", value):
            raise ValueError(f"{value!r} is not a DNS name")
        return value


class HealthConfig(Section):
    interval_s: float = Field(5.0, gt=0, description="Seconds between two probes of every replica's /health.")
    timeout_s: float = Field(2.0, gt=0, description="Seconds a probe may take before it counts as failed.")
    eject_after: int = Field(
        3,
        ge=1,
        le=100,
        description="Consecutive failures of a replica (probes, or requests it could not be reached for or did "
        "not answer in time) before it is ejected: no request is sent to it while another replica is healthy, "
        "until a probe succeeds.",
    )


class VllmConfig(Section):
    url: HttpUrl = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the vLLM OpenAI server, when there is one replica. Give exactly one of url, "
        "replicas and discovery.",
    )
    replicas: list[HttpUrl] | None = Field(
        None, min_length=1, description="Base URLs of several vLLM replicas serving the same model."
    )
    discovery: DiscoveryConfig | None = Field(
        None, description="Find the replicas by DNS: every address a name resolves to (a headless Service)."
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="How replicas are probed and ejected.")
    eviction: Literal["gateway", "vllm"] = Field(
        "gateway",
        description="gateway: this gateway unloads the least recently used idle adapter of a replica to make room "
        "(at most max_resident per replica); vllm: the gateway never unloads, vLLM's own LRU (--max-cpu-loras) "
        "evicts. Several gateways sharing the same replicas must use vllm.",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token vLLM expects (its --api-key); set it with TURNOUT_VLLM__API_KEY."
    )
    model: ModelName = Field(description="Name vLLM serves the base model under (its --served-model-name).")
    max_lora_rank: int = Field(
        16, ge=1, le=512, description="vLLM's --max-lora-rank: adapters of a higher rank are refused before loading."
    )
    max_resident: int = Field(
        4,
        ge=1,
        le=1024,
        description="Most adapters loaded on one replica at once; with eviction gateway the least recently used "
        "idle one is unloaded to make room. Set it to vLLM's --max-cpu-loras (or --max-loras).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to vLLM.")
    read_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest silence from vLLM: until a non-streaming answer arrives, and between stream "
        "chunks; beyond it the client gets 504.",
    )
    adapter_load_timeout_s: float = Field(120.0, gt=0, description="Seconds one adapter load may take.")
    capacity_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a request waits for an adapter slot when every resident adapter is busy, "
        "before it gets 503.",
    )

    @field_validator("replicas")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            repeated = sorted({url for url in value if value.count(url) > 1})
            if repeated:
                raise ValueError(f"a replica is listed more than once: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _one_way_to_the_replicas(self) -> Self:
        given = [key for key in ("url", "replicas", "discovery") if key in self.model_fields_set]
        given = [key for key in given if key == "url" or getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"give exactly one of url, replicas and discovery, not {' and '.join(given)}")
        return self

    @property
    def static_urls(self) -> list[str]:
        """The replicas named in the file: ``replicas``, else ``url``; none when they are discovered."""
        if self.discovery is not None:
            return []
        return list(self.replicas) if self.replicas is not None else [self.url]

    def describe(self) -> str:
        """Where the replicas are, in a few words (for the log and the command line)."""
        if self.discovery is not None:
            d = self.discovery
            return f"the replicas {d.dns} resolves to (port {d.port})"
        if self.replicas is not None:
            return f"{len(self.replicas)} replicas ({', '.join(self.replicas)})"
        return self.url


class BaseModelConfig(Section):
    name: ModelName | None = Field(None, description="Name clients use for the base model; defaults to vllm.model.")
    aliases: list[str] = Field(
        default_factory=list,
        description="Other names of the base model (a hub id, a path) that adapters may record as "
        "base_model_name_or_path; an adapter naming anything else is refused.",
    )
    path: Path | None = Field(
        None,
        description="Local directory of the base model (with config.json): when set, adapter weight "
        "shapes are checked against it before loading. Relative to the config file.",
    )


def _store_version(value: str) -> str:
    if not re.fullmatch(r"sha256-[0-9a-f]{12}", value):
        raise ValueError(f"{value!r} is not a store version: sha256- and 12 hex digits (turnout adapters versions)")
    return value


StoreVersion = Annotated[str, AfterValidator(_store_version)]


class AdapterConfig(Section):
    path: Path | None = Field(
        None,
        description="Directory with adapter_config.json and the weights. Relative to the config file. Exactly one "
        "of path and store.",
    )
    store: ModelName | None = Field(
        None,
        description="Serve a version from the adapter store (adapter_store.path) instead of a path: the one the "
        "store's name STORE points at, moved by turnout adapters push, activate and rollback; or version.",
    )
    version: StoreVersion | None = Field(
        None,
        description="A fixed store version (sha256-<12 hex>) instead of the one store's name points at: a canary "
        "beside it, or a version held back.",
    )
    served_path: str | None = Field(
        None,
        description="The directory as the vLLM server sees it, when it differs from path (another host).",
    )
    description: str = Field("", description="What the adapter is for; shown in /v1/models.")
    pinned: bool = Field(
        False,
        description="Loaded on every healthy replica, at start, on a replica that appears and on one that restarted; "
        "never evicted by the gateway.",
    )
    min_replicas: int = Field(
        0, ge=0, le=1024, description="Kept loaded on at least this many replicas (as many as there are, if fewer)."
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Never loaded on more replicas than this; unset: a hot adapter may spread to every replica.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.path is None) == (self.store is None):
            raise ValueError("give exactly one of path (a directory) and store (a name in the adapter store)")
        if self.version is not None and self.store is None:
            raise ValueError("version names a version in the adapter store: it needs store")
        if self.served_path is not None and self.store is not None:
            raise ValueError("served_path is for a path; for the store, set adapter_store.served_path")
        return self

    def vllm_name(self, name: str) -> str:
        """The name vLLM knows the adapter by: ``STORE@VERSION`` for a store version (the store's directory
        name, so that different weights never share a vLLM name), else ``name``, the served one."""
        if self.store is not None and self.version is not None:
            return f"{self.store}@{self.version}"
        return name

    @model_validator(mode="after")
    def _replica_bounds(self) -> Self:
        if self.pinned and (self.min_replicas > 0 or self.max_replicas is not None):
            raise ValueError("a pinned adapter is on every replica: min_replicas and max_replicas do not apply to it")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class AdapterStoreConfig(Section):
    path: Path | None = Field(
        None,
        description="Root of the adapter store (immutable NAME@sha256-... versions; `turnout adapters push`). "
        "Relative to the config file.",
    )
    served_path: str | None = Field(
        None, description="The store's root as the vLLM servers see it, when it differs from path (another host)."
    )
    watch_interval_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="How often the store's served names are read: a name moved to another version is served from "
        "it within this many seconds.",
    )
