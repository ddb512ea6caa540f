"""First-byte deadlines without a timer per request: work past its deadline raises DeadlineExceeded, work in
time returns untouched, and a cancellation that is not the deadline's (a client leaving) stays one."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.dispatch.deadlines import Deadlines
from gateway.errors import DeadlineExceeded


async def test_work_in_time_returns_its_result() -> None:
    deadlines = Deadlines(tick_s=0.01)
    try:
        assert await deadlines.within(time.perf_counter() + 60, 60, asyncio.sleep(0.03, result="ok")) == "ok"
    finally:
        deadlines.close()


async def test_work_past_its_deadline_raises_and_the_task_is_not_left_cancelled() -> None:
    deadlines = Deadlines(tick_s=0.01)
    never = asyncio.Event()
    try:
        with pytest.raises(DeadlineExceeded) as late:
            await deadlines.within(time.perf_counter() + 0.02, 0.02, never.wait())
        assert late.value.status == 504
        assert "limits.first_byte_timeout_s" in late.value.message
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0  # the request goes on (to answer 504) as if never cancelled
        await asyncio.sleep(0.03)  # and no stray cancellation reaches it later
    finally:
        deadlines.close()


async def test_another_cancellation_is_not_a_deadline() -> None:
    deadlines = Deadlines(tick_s=0.01)
    task = asyncio.create_task(deadlines.within(time.perf_counter() + 60, 60, asyncio.Event().wait()))
    await asyncio.sleep(0.02)
    task.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()
