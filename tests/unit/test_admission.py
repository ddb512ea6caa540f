"""Admission: requests beyond the work slots wait in order, a full queue or a long wait is refused at once with
503 and retry-after, and no slot is ever lost (to a refusal, a cancellation or a hand-over)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dispatch.admission import Admission, AdmissionLimits
from gateway.errors import Overloaded


async def hold(admission: Admission, release: asyncio.Event, log: list[str], name: str) -> None:
    async with admission.slot():
        log.append(name)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_within_the_slots_requests_go_at_once_and_the_rest_wait_in_order() -> None:
    admission = Admission(AdmissionLimits(max_in_work=2, max_waiting=5, max_wait_s=60))
    release, log = asyncio.Event(), list[str]()
    tasks = [asyncio.create_task(hold(admission, release, log, f"r{i}")) for i in range(4)]
    await settle()
    assert log == ["r0", "r1"]
    assert (admission.in_work, admission.waiting) == (2, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert log == ["r0", "r1", "r2", "r3"]
    assert (admission.in_work, admission.waiting) == (0, 0)


async def test_a_full_queue_is_refused_at_once_with_retry_after() -> None:
    admission = Admission(AdmissionLimits(max_in_work=1, max_waiting=1, max_wait_s=60))
    release, log = asyncio.Event(), list[str]()
    tasks = [asyncio.create_task(hold(admission, release, log, f"r{i}")) for i in range(2)]
    await settle()
    with pytest.raises(Overloaded) as refused:
        async with admission.slot():
            pass
    assert refused.value.status == 503
    assert refused.value.headers["retry-after"] == "1"
    assert "limits.max_waiting" in refused.value.message
    release.set()
    await asyncio.gather(*tasks)
    assert (admission.in_work, admission.waiting, admission.refused) == (0, 0, 1)


async def test_a_wait_longer_than_allowed_is_refused_and_frees_its_place() -> None:
    admission = Admission(AdmissionLimits(max_in_work=1, max_waiting=4, max_wait_s=0.01))
    release, log = asyncio.Event(), list[str]()
    first = asyncio.create_task(hold(admission, release, log, "first"))
    await settle()
    with pytest.raises(Overloaded) as refused:
        async with admission.slot():
            pass
    assert "limits.max_wait_s" in refused.value.message
    assert (admission.in_work, admission.waiting) == (1, 0)
    release.set()
    await first
    assert admission.in_work == 0


async def test_a_waiter_cancelled_loses_nothing_and_one_handed_a_slot_gives_it_back() -> None:
    admission = Admission(AdmissionLimits(max_in_work=1, max_waiting=4, max_wait_s=60))
    release, log = asyncio.Event(), list[str]()
    first = asyncio.create_task(hold(admission, release, log, "first"))
    await settle()
    waiting = asyncio.create_task(hold(admission, asyncio.Event(), log, "never"))
    await settle()
    waiting.cancel()  # cancelled in the queue
    await asyncio.gather(waiting, return_exceptions=True)
    assert (admission.in_work, admission.waiting) == (1, 0)
    handed = asyncio.create_task(hold(admission, asyncio.Event(), log, "handed"))
    await settle()
    release.set()
    await first  # hands its slot to "handed" ...
    handed.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(handed, return_exceptions=True)
    assert (admission.in_work, admission.waiting) == (0, 0)


async def test_new_limits_free_waiting_requests_at_once() -> None:
    admission = Admission(AdmissionLimits(max_in_work=1, max_waiting=4, max_wait_s=60))
    release, log = asyncio.Event(), list[str]()
    tasks = [asyncio.create_task(hold(admission, release, log, f"r{i}")) for i in range(3)]
    await settle()
    assert log == ["r0"]
    admission.use(AdmissionLimits(max_in_work=3, max_waiting=4, max_wait_s=60))
    await settle()
    assert log == ["r0", "r1", "r2"]
    release.set()
    await asyncio.gather(*tasks)
    assert admission.in_work == 0
