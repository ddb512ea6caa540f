"""Which evidence store a configuration names: PostgreSQL when ``shadows.database_url`` is set (every gateway
replica writing to one database), else the SQLite file ``shadows.store``."""

from __future__ import annotations

from pathlib import Path

from gateway.config.evidence import ShadowsConfig
from gateway.evidence.postgres import PostgresEvidenceStore
from gateway.evidence.store import EvidenceStore

Evidence = EvidenceStore | PostgresEvidenceStore


def open_evidence(config: ShadowsConfig, path: Path | None = None) -> Evidence:
    """The store ``config`` names (``path``: another SQLite file instead)."""
    days, rows, texts = config.retention_days, config.max_rows, config.keep_texts
    if path is None and config.database_url is not None:
        url = config.database_url.get_secret_value()
        return PostgresEvidenceStore(url, retention_days=days, max_rows=rows, keep_texts=texts)
    return EvidenceStore(path or config.store, retention_days=days, max_rows=rows, keep_texts=texts)


def has_evidence(config: ShadowsConfig) -> bool:
    """Whether there may be anything to read (a database, or the SQLite file exists): never creates one."""
    return config.database_url is not None or config.store.exists()


__all__ = ["Evidence", "has_evidence", "open_evidence"]
