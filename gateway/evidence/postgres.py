"""The evidence store in PostgreSQL (``shadows.database_url``): the same rows as the SQLite store, in one
database every gateway replica writes to, so the report and replay see all of their traffic.

psycopg 3 (the ``postgres`` extra) with one connection per store, in autocommit, used from a worker thread
(``asyncio.to_thread``) under a lock, like the SQLite store: writes are a few rows per shadowed request, from
the shadow workers only. Tables are created if missing; retention and the size bound are applied as rows
are added.
"""

from __future__ import annotations

from typing import Any

from gateway.evidence.store import COLUMNS, SqlEvidence

_TYPES = {
    "at": "DOUBLE PRECISION NOT NULL",
    "request_id": "TEXT",
    "policy": "TEXT",
    "rule": "TEXT",
    "intent": "TEXT",
    "arm": "TEXT",
    "primary": "BOOLEAN NOT NULL",
    "status": "INTEGER NOT NULL",
    "error": "TEXT",
    "seconds": "DOUBLE PRECISION",
    "ttft_seconds": "DOUBLE PRECISION",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "usd": "DOUBLE PRECISION",
    "agreement": "DOUBLE PRECISION",
    "citations": "INTEGER",
    "best_score": "DOUBLE PRECISION",
    "request_text": "TEXT",
    "answer": "TEXT",
}


class PostgresEvidenceStore(SqlEvidence):
    mark = "%s"
    arms, requests = "turnout_arms", "turnout_requests"

    def __init__(self, url: str, *, retention_days: float, max_rows: int, keep_texts: bool) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the extra is part of every install made here
            raise RuntimeError("shadows.database_url needs psycopg: pip install 'turnout[postgres]'") from exc
        self.url = url
        db = psycopg.connect(url, autocommit=True)
        super().__init__(db, retention_days=retention_days, max_rows=max_rows, keep_texts=keep_texts)
        columns = ", ".join(f'"{name}" {_TYPES[name]}' for name in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS turnout_arms ({columns})")
        db.execute("CREATE INDEX IF NOT EXISTS turnout_arms_at ON turnout_arms (at)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS turnout_requests (at DOUBLE PRECISION NOT NULL, request_id TEXT, policy TEXT, "
            "rule TEXT, target TEXT, features TEXT NOT NULL, embedding BYTEA, text TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS turnout_requests_at ON turnout_requests (at)")

    def _transaction(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        with self._db.transaction(), self._db.cursor() as cursor:
            cursor.executemany(sql, values)

    def _past_the_bound(self, table: str) -> str:
        return f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} ORDER BY at DESC OFFSET %s)"


__all__ = ["PostgresEvidenceStore"]
