"""Deadlines for the first byte of an answer, kept without a timer per request.

``asyncio.timeout`` costs about 7 µs per request on this kind of machine (a Timeout object, a timer armed
and cancelled, the task's cancel bookkeeping): a fifth of what the gateway's own Python costs a request.
:class:`Deadlines` keeps the requests that are opening their answer in a dict, by task, and one task checks
it every ``tick`` seconds, cancelling those past their deadline, which then raise
:class:`~gateway.errors.DeadlineExceeded`; a request pays for two dict operations. A deadline is thus kept to
within ``tick``.

A cancellation can only reach the request while it is inside :meth:`Deadlines.within` (it leaves the dict
in the same step that leaves the block), so an answer that has begun is never cut.

May import: ``gateway.errors``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from gateway.errors import DeadlineExceeded

T = TypeVar("T")


class Deadlines:
    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        self._open: dict[asyncio.Task[object], float] = {}  # request task -> deadline (perf_counter)
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def within(self, deadline: float, timeout_s: float, work: Awaitable[T]) -> T:
        """``work``'s result, or :class:`DeadlineExceeded` once ``time.perf_counter()`` passes ``deadline``
        (``timeout_s`` after the request arrived: for the message)."""
        task = self.enter(deadline)
        try:
            return await work
        except asyncio.CancelledError:
            self.expired(task, timeout_s)
            raise
        finally:
            self._open.pop(task, None)

    def enter(self, deadline: float) -> asyncio.Task[object]:
        """Hold the current task to ``deadline`` until it leaves (``_open.pop``), in the caller's own frame: a
        wrapping coroutine would cost the hot path one more frame per request."""
        task = asyncio.current_task()
        assert task is not None
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="first-byte-deadlines")
        self._open[task] = deadline
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._open.pop(task, None)

    def expired(self, task: asyncio.Task[object], timeout_s: float) -> None:
        """Called with a cancellation in hand: :class:`DeadlineExceeded` if it was the deadline's (the task
        is then no longer cancelled), else nothing (the caller re-raises it)."""
        if task not in self._expired:
            return
        self._expired.discard(task)
        task.uncancel()
        raise DeadlineExceeded(
            f"No answer began within {timeout_s:g} s of the request's arrival (limits.first_byte_timeout_s)"
        ) from None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.perf_counter()
            late = [task for task, deadline in self._open.items() if deadline <= now]
            for task in late:
                del self._open[task]
                self._expired.add(task)
                task.cancel()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


__all__ = ["Deadlines"]
