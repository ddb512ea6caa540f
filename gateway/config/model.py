"""The configuration file's schema: one pydantic model, validated once at start-up.

The sections about the vLLM replicas and the adapters live in :mod:`gateway.config.serving`, the field types
every section shares in :mod:`gateway.config.fields`; all are importable from here.

Every key is documented here (``turnout config schema`` prints these descriptions as JSON Schema)
and in the README. Unknown keys are errors, so a typo never silently falls back to a default.
Environment variables ``TURNOUT_<SECTION>__<KEY>`` override the file (for secrets and addresses),
for example ``TURNOUT_VLLM__URL`` or ``TURNOUT_VLLM__API_KEY``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config import references
from gateway.config.evidence import ShadowsConfig
from gateway.config.fields import (
    MODEL_NAME,
    PACKAGED_EMBEDDER,
    CollectionName,
    HttpUrl,
    ModelName,
    RedisUrl,
    Section,
)
from gateway.config.serving import (
    AdapterConfig,
    AdapterStoreConfig,
    BaseModelConfig,
    DiscoveryConfig,
    HealthConfig,
    StoreVersion,
    VllmConfig,
)
from routing.conditions import intents_used
from routing.spec import IntentSpec, PolicySpec

# Importable from here, as the whole schema, though some sections are defined beside this module.
__all__ = [
    "PACKAGED_EMBEDDER",
    "AdapterConfig",
    "AdapterStoreConfig",
    "ApiKeyConfig",
    "AuthConfig",
    "BaseModelConfig",
    "ChunkingConfig",
    "CollectionConfig",
    "CollectionName",
    "CostsConfig",
    "DiscoveryConfig",
    "EmbeddingsConfig",
    "EnvironmentSource",
    "HealthConfig",
    "HttpUrl",
    "ModelName",
    "OpenAIConfig",
    "OpenAICostConfig",
    "RagConfig",
    "RagCostConfig",
    "RagStoreConfig",
    "Section",
    "ServerConfig",
    "StoreVersion",
    "TokenPriceConfig",
    "TurnoutConfig",
    "VllmConfig",
    "VllmCostConfig",
]


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the gateway listens on.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    # The connection's edge (gateway/api/edge.py): checked on the bytes as they arrive, before any API key.
    max_url_bytes: int = Field(
        8192, ge=256, le=1 << 20, description="Longest request target (path and query); longer get 414."
    )
    max_header_bytes: int = Field(
        32768,
        ge=1024,
        le=1 << 20,
        description="Most bytes of headers in one request; more get 431 and the connection is closed.",
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="Most header lines in one request; more get 431.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's headers, from its connection or its request's first "
        "byte; slower get 408 and are closed (a connection that sent nothing is just closed).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's whole body once its headers are in; slower get 408 "
        "and are closed. Answers, streams included, are never cut by it.",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, le=3600, description="Seconds an idle kept-alive client connection stays open between requests."
    )
    max_connections: int = Field(
        1024, ge=1, le=1_000_000, description="Client connections open at once; one more gets 503 and is closed."
    )


class EmbeddingsConfig(Section):
    model: str = Field(
        PACKAGED_EMBEDDER,
        description=f"Sentence-transformers model: {PACKAGED_EMBEDDER!r} (shipped in a PyPI package, "
        "384 dimensions) or a local model directory. Never downloaded.",
    )
    backend: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        "auto",
        description="How the model runs: auto (its ONNX export quantised to 8-bit blocks, through onnxruntime, "
        "when the model is a BERT with mean pooling, built locally once; else torch), onnx-int8 (that export, or "
        "refuse to start), onnx (the exact export, about 1.4x slower; or refuse to start), torch "
        "(sentence-transformers).",
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


class QuotaConfig(Section):
    """What one API key, or one tenant's keys together, may use; each bound unset: no bound."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests in any 60 s (a sliding window).")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt and completion tokens in the current minute (UTC), counted when answered."
    )
    usd_per_day: float | None = Field(
        None, gt=0, description="US dollars in the current day (UTC), as metered (held when routed)."
    )
    usd_per_month: float | None = Field(
        None, gt=0, description="US dollars in the current month (UTC), as metered (held when routed)."
    )


class ApiKeyConfig(Section):
    key: SecretStr | None = Field(
        None, description="The key itself (prefer key_sha256, or set it from the environment)."
    )
    key_sha256: str | None = Field(None, description="SHA-256 (hex) of the key, so the file holds no secret.")
    tenant: ModelName | None = Field(None, description="The tenant this key acts for (policies, RAG partitions).")
    admin: bool = Field(False, description="May call /admin and manage every tenant's documents.")
    quota: QuotaConfig | None = Field(None, description="What this key may use (429 beyond it).")

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
    training_tokens_per_second: float = Field(
        2000.0,
        gt=0,
        description="Training tokens one GPU of this kind trains a LoRA adapter on per second (turnout finetune "
        "estimate; the base model's size decides it: measure one run).",
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
    training_usd_per_1m_tokens: dict[str, float] = Field(
        default_factory=dict,
        description="Fine-tuning prices (US dollars per million training tokens) by OpenAI base model id, "
        "overriding the table Turnout ships (turnout finetune estimate).",
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


class LimitsConfig(Section):
    """What one completion request (or route explanation) may carry: bounds on the work a small body can ask."""

    max_messages: int = Field(
        2048, ge=1, le=1_000_000, description="Most messages (or Responses input items, or prompts) in one request."
    )
    max_message_chars: int = Field(
        524_288,
        ge=1,
        description="Most characters of text in one message; the default is a 128k-token context at ~4 "
        "characters a token, more than any served model reads.",
    )
    max_input_chars: int = Field(
        524_288, ge=1, description="Most characters of text in all of one request's messages together."
    )
    max_in_work: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Requests in the gateway's own work at once (parsing, routing, the query embedding); more wait.",
    )
    max_waiting: int = Field(
        256, ge=0, le=1_000_000, description="Requests waiting for that work; one more gets 503 with retry-after."
    )
    max_wait_s: float = Field(
        5.0, gt=0, le=600, description="Longest wait for that work; longer gets 503 with retry-after."
    )
    tenants: dict[ModelName, QuotaConfig] = Field(
        default_factory=dict, description="What each tenant's keys may use together (429 beyond it)."
    )
    store: RedisUrl | None = Field(
        None,
        description="Where quota counters live: unset, in this gateway's memory; a redis:// URL, in Redis, shared "
        "by every gateway that names it.",
    )
    reserve_output_tokens: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Answer tokens a request that sets no max_tokens holds against token and dollar quotas until "
        "its real usage is known.",
    )
    on_store_error: Literal["open", "closed"] = Field(
        "open",
        description="When the quota store cannot be reached: open (serve, unmetered) or closed (503); counted in "
        "turnout_quota_store_errors_total.",
    )
    first_byte_timeout_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="Seconds from a completion request's arrival to its answer's first byte (routing, retrieval, "
        "adapter loads, fallbacks, the upstream's first byte); later gets 504. A begun answer is never cut.",
    )


class BreakerConfig(Section):
    """Circuit breakers: an OpenAI model that keeps failing is not sent requests for a while (its fallbacks
    answer at once); a vLLM replica failing at this error rate is ejected (as by ``vllm.health``)."""

    failures: int = Field(5, ge=1, le=10_000, description="Failures in a row that open an upstream's circuit.")
    error_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of failures among the last window outcomes that opens it too (and ejects a vLLM replica).",
    )
    window: int = Field(20, ge=2, le=10_000, description="Outcomes the error rate is taken over.")
    open_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds an open circuit refuses at once before one trial request; also how often one "
        "request may try vLLM while every replica is ejected.",
    )


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
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    shadows: ShadowsConfig = Field(default_factory=ShadowsConfig)
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
        found += self._quota_problems()
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

    def _quota_problems(self) -> list[str]:
        """A tenant's quota for a tenant no key acts for would never apply: a typo, said at start."""
        tenants = {key.tenant for key in self.auth.keys if key.tenant is not None}
        return [
            f"{references.key_path(('limits', 'tenants', name))}: no key in auth.keys acts for tenant {name!r}"
            for name in self.limits.tenants
            if name not in tenants
        ]

    def _embedding_name_problems(self) -> list[str]:
        name = self.embeddings.served_name
        if self.embeddings.name is None and not MODEL_NAME.fullmatch(name):
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
