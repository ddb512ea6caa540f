"""The arms' rows in SQLite: one row per arm of each shadowed request (the primary answer included), with
what it measured; rows older than the retention, and the oldest past the size bound, are deleted as rows
are added.

SQLite runs in a worker thread (``asyncio.to_thread``) with one connection in WAL mode, so the event loop
never waits on the disk; writes come from the shadow workers only, a few rows at a time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

PRUNE_EVERY = 100  # rows added between two prunings


@dataclass(frozen=True, slots=True)
class ArmRow:
    at: float  # unix time the request arrived
    request_id: str
    policy: str
    rule: str
    intent: str | None
    arm: str  # the target's label (adapter:formal, rag:handbook+base, openai:ft:...)
    primary: bool  # the answer the client got
    status: int  # 200, or the error's status
    error: str | None  # the error's code
    seconds: float  # to the last byte
    ttft_seconds: float | None
    prompt_tokens: int
    completion_tokens: int
    usd: float
    agreement: float | None  # cosine similarity with the primary answer (None for the primary, or no embedder)
    citations: int | None  # a RAG arm's citations
    best_score: float | None  # a RAG arm's best retrieval score
    request_text: str | None = None  # kept only with shadows.keep_texts
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What routing saw of a sampled request, for replaying it through another policy: its features (the
    headers without credentials), its query embedding when it had one, the text only with keep_texts."""

    at: float
    request_id: str
    policy: str
    rule: str
    target: str
    features: dict[str, Any]  # model, tenant, headers, metadata, user, message_count, token_estimate, conversation
    embedding: list[float] | None
    text: str | None = None


COLUMNS = [f.name for f in fields(ArmRow)]
_TYPES = {"at": "REAL NOT NULL", "primary": "INTEGER NOT NULL", "status": "INTEGER NOT NULL"}


class SqlEvidence:
    """What both stores do, in SQL: each subclass opens its connection, creates its tables and says how its
    database writes a parameter, names its tables, runs a transaction and deletes past the size bound."""

    mark = "?"  # a parameter in the database's SQL
    arms, requests = "arms", "requests"
    order = "at"  # rows come back oldest first (SQLite adds its rowid: the arms of one request in turn)

    def __init__(self, db: Any, *, retention_days: float, max_rows: int, keep_texts: bool) -> None:
        self._db = db
        self._retention_s = retention_days * 86_400
        self._max_rows = max_rows
        self._keep_texts = keep_texts
        self._lock = threading.Lock()
        self._added = 0

    def _transaction(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _past_the_bound(self, table: str) -> str:
        """A statement deleting ``table``'s rows beyond the newest (one parameter: how many are kept)."""
        raise NotImplementedError

    async def add(self, rows: list[ArmRow]) -> None:
        await asyncio.to_thread(self._add, rows)

    def _add(self, rows: list[ArmRow]) -> None:
        if not self._keep_texts:
            rows = [without_texts(row) for row in rows]
        marks = ", ".join(self.mark for _ in COLUMNS)
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        with self._lock:
            self._transaction(f"INSERT INTO {self.arms} ({names}) VALUES ({marks})", [astuple(r) for r in rows])
            self._added += len(rows)
            if self._added >= PRUNE_EVERY:
                self._added = 0
                self._prune()

    def _prune(self) -> None:
        for table in (self.arms, self.requests):
            self._db.execute(f"DELETE FROM {table} WHERE at < {self.mark}", (time.time() - self._retention_s,))
            self._db.execute(self._past_the_bound(table), (self._max_rows,))

    async def add_request(self, record: RequestRecord) -> None:
        await asyncio.to_thread(self._add_request, record)

    def _add_request(self, record: RequestRecord) -> None:
        vector = np.asarray(record.embedding, dtype=np.float32).tobytes() if record.embedding is not None else None
        text = record.text if self._keep_texts else None
        values = (record.at, record.request_id, record.policy, record.rule, record.target,
                  json.dumps(record.features, separators=(",", ":")), vector, text)  # fmt: skip
        marks = ", ".join(self.mark for _ in values)
        with self._lock:
            self._db.execute(f"INSERT INTO {self.requests} VALUES ({marks})", values)

    def read_requests(self, since: float | None = None) -> list[RequestRecord]:
        """The sampled requests' records (from ``since``, unix time), oldest first."""
        with self._lock:
            found = self._db.execute(
                "SELECT at, request_id, policy, rule, target, features, embedding, text "
                f"FROM {self.requests} WHERE at >= {self.mark} ORDER BY {self.order}",
                (since or 0.0,),
            ).fetchall()
        return [
            RequestRecord(at, request_id, policy, rule, target, json.loads(features),
                          np.frombuffer(bytes(vector), dtype=np.float32).tolist() if vector is not None else None,
                          text)
            for at, request_id, policy, rule, target, features, vector, text in found
        ]  # fmt: skip

    async def rows(self, since: float | None = None) -> list[ArmRow]:
        """Every row (from ``since``, unix time), oldest first."""
        return await asyncio.to_thread(self.read, since)

    def read(self, since: float | None = None) -> list[ArmRow]:
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        with self._lock:
            found = self._db.execute(
                f"SELECT {names} FROM {self.arms} WHERE at >= {self.mark} ORDER BY {self.order}", (since or 0.0,)
            ).fetchall()
        return [row_of(tuple(values)) for values in found]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class EvidenceStore(SqlEvidence):
    """The embedded default: a SQLite file (WAL mode)."""

    order = "at, rowid"

    def __init__(self, path: Path, *, retention_days: float, max_rows: int, keep_texts: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        super().__init__(db, retention_days=retention_days, max_rows=max_rows, keep_texts=keep_texts)
        db.execute("PRAGMA journal_mode=WAL")
        columns = ", ".join(f'"{name}" {_TYPES.get(name, "")}'.rstrip() for name in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS arms ({columns})")
        db.execute("CREATE INDEX IF NOT EXISTS arms_at ON arms (at)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS requests (at REAL NOT NULL, request_id TEXT, policy TEXT, rule TEXT, "
            "target TEXT, features TEXT NOT NULL, embedding BLOB, text TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS requests_at ON requests (at)")

    def _transaction(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(sql, values)
        self._db.execute("COMMIT")

    def _past_the_bound(self, table: str) -> str:
        return f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY at DESC LIMIT -1 OFFSET ?)"


def row_of(values: tuple[Any, ...]) -> ArmRow:
    named: dict[str, Any] = dict(zip(COLUMNS, values, strict=True))
    named["primary"] = bool(named["primary"])
    return ArmRow(**named)


def without_texts(row: ArmRow) -> ArmRow:
    if row.request_text is None and row.answer is None:
        return row
    values = dict(zip(COLUMNS, astuple(row), strict=True))
    values.update(request_text=None, answer=None)
    return ArmRow(**values)


__all__ = ["ArmRow", "EvidenceStore", "RequestRecord", "SqlEvidence"]
