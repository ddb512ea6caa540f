"""The evidence store: rows kept in SQLite and read back whole, texts dropped unless kept, and the retention
and the size bound applied as rows are added."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from gateway.evidence.store import ArmRow, EvidenceStore

ROW = ArmRow(
    at=0.0,
    request_id="r",
    policy="bot",
    rule="all",
    intent="billing",
    arm="adapter:terse",
    primary=False,
    status=200,
    error=None,
    seconds=0.25,
    ttft_seconds=0.05,
    prompt_tokens=12,
    completion_tokens=8,
    usd=0.0001,
    agreement=0.91,
    citations=None,
    best_score=None,
    request_text="Where is my parcel?",
    answer="On its way.",
)


async def test_rows_are_read_back_as_written_without_texts_unless_kept(tmp_path: Path) -> None:
    now = time.time()
    store = EvidenceStore(tmp_path / "e.sqlite", retention_days=1, max_rows=100, keep_texts=False)
    primary = replace(ROW, at=now, arm="adapter:formal", primary=True, agreement=None)
    await store.add([primary, replace(ROW, at=now)])
    read = await store.rows()
    assert read == [
        replace(primary, request_text=None, answer=None),
        replace(ROW, at=now, request_text=None, answer=None),
    ]
    store.close()
    kept = EvidenceStore(tmp_path / "k.sqlite", retention_days=1, max_rows=100, keep_texts=True)
    await kept.add([replace(ROW, at=now)])
    assert (await kept.rows())[0].answer == "On its way."
    kept.close()


async def test_old_rows_and_rows_past_the_bound_are_deleted(tmp_path: Path) -> None:
    now = time.time()
    store = EvidenceStore(tmp_path / "e.sqlite", retention_days=1, max_rows=100, keep_texts=False)
    await store.add([replace(ROW, at=now - 2 * 86_400, request_id="old")])
    await store.add([replace(ROW, at=now + i, request_id=f"new-{i}") for i in range(150)])  # prunes past 100 adds
    rows = await store.rows()
    assert len(rows) == 100
    assert rows[0].request_id == "new-50"  # the oldest went first; the expired row too
    assert (await store.rows(since=now + 140))[0].request_id == "new-140"
    store.close()
