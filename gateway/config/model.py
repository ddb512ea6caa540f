"""The configuration file's schema: one pydantic model, validated once at start-up.

Every key is documented here (``turnout config schema`` prints these descriptions as JSON Schema)
and in the README. Unknown keys are errors, so a typo never silently falls back to a default.
Environment variables ``TURNOUT_<SECTION>__<KEY>`` override the file (for secrets and addresses),
for example ``TURNOUT_VLLM__URL`` or ``TURNOUT_VLLM__API_KEY``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def _model_name(value: str) -> str:
    if not _NAME.match(value):
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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the gateway listens on.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


class VllmConfig(Section):
    url: HttpUrl = Field("http://127.0.0.1:8000", description="Base URL of the vLLM OpenAI server.")
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
        description="Most adapters loaded on the server at once; the least recently used idle one is "
        "unloaded to make room. Set it to vLLM's --max-cpu-loras (or --max-loras).",
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


class AdapterConfig(Section):
    path: Path = Field(description="Directory with adapter_config.json and the weights. Relative to the config file.")
    served_path: str | None = Field(
        None,
        description="The directory as the vLLM server sees it, when it differs from path (another host).",
    )
    description: str = Field("", description="What the adapter is for; shown in /v1/models.")


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
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Self:
        base = self.base_model_name
        if base in self.adapters:
            raise ValueError(f"adapter name {base!r} is also the base model's name; rename one of them")
        return self

    @property
    def base_model_name(self) -> str:
        return self.base_model.name or self.vllm.model
