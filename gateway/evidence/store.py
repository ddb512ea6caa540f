"""The arms' rows in SQLite: one row per arm of each shadowed request (the primary answer included), with
what it measured; rows older than the retention, and the oldest past the size bound, are deleted as rows
are added.

SQLite runs in a worker thread (``asyncio.to_thread``) with one connection in WAL mode, so the event loop
never waits on the disk; writes come from the shadow workers only, a few rows at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

_PRUNE_EVERY = 100  # rows added between two prunings


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


_COLUMNS = [f.name for f in fields(ArmRow)]
_TYPES = {"at": "REAL NOT NULL", "primary": "INTEGER NOT NULL", "status": "INTEGER NOT NULL"}


class EvidenceStore:
    def __init__(self, path: Path, *, retention_days: float, max_rows: int, keep_texts: bool) -> None:
        self.path = path
        self._retention_s = retention_days * 86_400
        self._max_rows = max_rows
        self._keep_texts = keep_texts
        self._lock = threading.Lock()
        self._added = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        columns = ", ".join(f'"{name}" {_TYPES.get(name, "")}'.rstrip() for name in _COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS arms ({columns})")
        self._db.execute("CREATE INDEX IF NOT EXISTS arms_at ON arms (at)")

    async def add(self, rows: list[ArmRow]) -> None:
        await asyncio.to_thread(self._add, rows)

    def _add(self, rows: list[ArmRow]) -> None:
        if not self._keep_texts:
            rows = [_without_texts(row) for row in rows]
        marks = ", ".join("?" for _ in _COLUMNS)
        names = ", ".join(f'"{name}"' for name in _COLUMNS)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT INTO arms ({names}) VALUES ({marks})", [astuple(row) for row in rows])
            self._db.execute("COMMIT")
            self._added += len(rows)
            if self._added >= _PRUNE_EVERY:
                self._added = 0
                self._prune()

    def _prune(self) -> None:
        self._db.execute("DELETE FROM arms WHERE at < ?", (time.time() - self._retention_s,))
        self._db.execute(
            "DELETE FROM arms WHERE rowid IN (SELECT rowid FROM arms ORDER BY at DESC LIMIT -1 OFFSET ?)",
            (self._max_rows,),
        )

    async def rows(self, since: float | None = None) -> list[ArmRow]:
        """Every row (from ``since``, unix time), oldest first."""
        return await asyncio.to_thread(self.read, since)

    def read(self, since: float | None = None) -> list[ArmRow]:
        names = ", ".join(f'"{name}"' for name in _COLUMNS)
        with self._lock:
            found = self._db.execute(
                f"SELECT {names} FROM arms WHERE at >= ? ORDER BY at, rowid", (since or 0.0,)
            ).fetchall()
        return [_row(values) for values in found]

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(values: tuple[Any, ...]) -> ArmRow:
    named: dict[str, Any] = dict(zip(_COLUMNS, values, strict=True))
    named["primary"] = bool(named["primary"])
    return ArmRow(**named)


def _without_texts(row: ArmRow) -> ArmRow:
    if row.request_text is None and row.answer is None:
        return row
    values = dict(zip(_COLUMNS, astuple(row), strict=True))
    values.update(request_text=None, answer=None)
    return ArmRow(**values)


__all__ = ["ArmRow", "EvidenceStore"]
