"""The evidence store in PostgreSQL (``shadows.database_url``): the same rows as the SQLite store, in one
database every gateway replica writes to, so the report and replay see all of their traffic.

psycopg 3 (the ``postgres`` extra) with one connection per store, in autocommit, used from a worker thread
(``asyncio.to_thread``) under a lock, like the SQLite store: writes are a few rows per shadowed request, from
the shadow workers only. Tables are created if missing; retention and the size bound are applied as rows
are added.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import astuple
from typing import Any

import numpy as np

from gateway.evidence.store import COLUMNS, PRUNE_EVERY, ArmRow, RequestRecord, row_of, without_texts

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


class PostgresEvidenceStore:
    def __init__(self, url: str, *, retention_days: float, max_rows: int, keep_texts: bool) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the extra is part of every install made here
            raise RuntimeError("shadows.database_url needs psycopg: pip install 'turnout[postgres]'") from exc
        self.url = url
        self._retention_s = retention_days * 86_400
        self._max_rows = max_rows
        self._keep_texts = keep_texts
        self._lock = threading.Lock()
        self._added = 0
        self._db = psycopg.connect(url, autocommit=True)
        columns = ", ".join(f'"{name}" {_TYPES[name]}' for name in COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS turnout_arms ({columns})")
        self._db.execute("CREATE INDEX IF NOT EXISTS turnout_arms_at ON turnout_arms (at)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS turnout_requests (at DOUBLE PRECISION NOT NULL, request_id TEXT, policy TEXT, "
            "rule TEXT, target TEXT, features TEXT NOT NULL, embedding BYTEA, text TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS turnout_requests_at ON turnout_requests (at)")

    async def add(self, rows: list[ArmRow]) -> None:
        await asyncio.to_thread(self._add, rows)

    def _add(self, rows: list[ArmRow]) -> None:
        if not self._keep_texts:
            rows = [without_texts(row) for row in rows]
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        marks = ", ".join("%s" for _ in COLUMNS)
        with self._lock:
            with self._db.transaction(), self._db.cursor() as cursor:
                cursor.executemany(f"INSERT INTO turnout_arms ({names}) VALUES ({marks})", [astuple(r) for r in rows])
            self._added += len(rows)
            if self._added >= PRUNE_EVERY:
                self._added = 0
                self._prune()

    def _prune(self) -> None:
        for table in ("turnout_arms", "turnout_requests"):
            self._db.execute(f"DELETE FROM {table} WHERE at < %s", (time.time() - self._retention_s,))
            self._db.execute(
                f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} ORDER BY at DESC OFFSET %s)",
                (self._max_rows,),
            )

    async def rows(self, since: float | None = None) -> list[ArmRow]:
        return await asyncio.to_thread(self.read, since)

    def read(self, since: float | None = None) -> list[ArmRow]:
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        with self._lock:
            found = self._db.execute(
                f"SELECT {names} FROM turnout_arms WHERE at >= %s ORDER BY at", (since or 0.0,)
            ).fetchall()
        return [row_of(tuple(values)) for values in found]

    async def add_request(self, record: RequestRecord) -> None:
        await asyncio.to_thread(self._add_request, record)

    def _add_request(self, record: RequestRecord) -> None:
        vector = np.asarray(record.embedding, dtype=np.float32).tobytes() if record.embedding is not None else None
        text = record.text if self._keep_texts else None
        values = (record.at, record.request_id, record.policy, record.rule, record.target,
                  json.dumps(record.features, separators=(",", ":")), vector, text)  # fmt: skip
        with self._lock:
            self._db.execute("INSERT INTO turnout_requests VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", values)

    def read_requests(self, since: float | None = None) -> list[RequestRecord]:
        with self._lock:
            found: list[Any] = self._db.execute(
                "SELECT at, request_id, policy, rule, target, features, embedding, text FROM turnout_requests "
                "WHERE at >= %s ORDER BY at",
                (since or 0.0,),
            ).fetchall()
        return [
            RequestRecord(at, request_id, policy, rule, target, json.loads(features),
                          np.frombuffer(bytes(vector), dtype=np.float32).tolist() if vector is not None else None, text)
            for at, request_id, policy, rule, target, features, vector, text in found
        ]  # fmt: skip

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["PostgresEvidenceStore"]
