"""The shadows section: how shadow arms run (a bounded queue, a few workers) and where what they measure is
kept (SQLite by default, with a retention and a size bound)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from gateway.config.fields import Section


class ShadowsConfig(Section):
    queue_size: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Sampled requests waiting for their shadow arms; one more is dropped (and counted).",
    )
    workers: int = Field(2, ge=1, le=64, description="Sampled requests whose shadow arms run at once.")
    store: Path = Field(
        Path("turnout-evidence.sqlite"),
        description="The SQLite file where every arm's figures are kept (relative to the configuration file).",
    )
    database_url: SecretStr | None = Field(
        None,
        description="A postgresql:// URL: keep the rows in PostgreSQL instead, one database for every gateway "
        "replica (better TURNOUT_SHADOWS__DATABASE_URL: it may hold a password).",
    )
    retention_days: float = Field(30.0, gt=0, description="Rows older than this are deleted.")
    max_rows: int = Field(1_000_000, ge=100, description="Most rows kept; the oldest go first.")
    keep_texts: bool = Field(
        False, description="Also keep the request's text and each arm's answer (off: figures and intents only)."
    )

    @field_validator("database_url")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL")
        return value


__all__ = ["ShadowsConfig"]
