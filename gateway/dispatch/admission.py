"""Admission: a bounded number of requests in the gateway's own work, a bounded queue before it, a bounded
wait in the queue, and a refusal at once past any of them.

The gateway's own work (parsing, routing, the query embedding) runs on its one event loop and its one
embedding worker; with more requests in it than the machine serves, every one of them gets slower and none
is refused, until clients time out with no answer (192 concurrent clients on a semantic policy left 84 of
700 requests unanswered after 60 s). :class:`Admission` lets ``limits.max_in_work`` requests do that work at
once and up to ``limits.max_waiting`` more wait their turn, each for at most ``limits.max_wait_s``; one
more, or one that waited too long, is refused with 503 and ``retry-after``. A slot is held only for that
work: never while the answer is generated or streamed, so running streams are never cut or slowed by it.

May import: ``gateway.errors``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

from gateway.errors import Overloaded


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_in_work: int
    max_waiting: int
    max_wait_s: float


class Admission:
    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.in_work = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.refused = 0  # requests refused so far (tests and /admin read it)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def use(self, limits: AdmissionLimits) -> None:
        """New limits (a reload): requests in work keep their slots; waiting ones get freed slots first."""
        self.limits = limits
        self._hand_over()

    def enter_now(self) -> bool:
        """Take a slot if one is free and nobody waits (no await: the usual case); False otherwise."""
        if self.in_work < self.limits.max_in_work and not self._waiting:
            self.in_work += 1
            return True
        return False

    async def enter(self) -> None:
        """Take a slot, waiting for one in turn; :class:`Overloaded` if none frees in time or the queue is
        full. Every slot taken is given back with :meth:`leave`."""
        if not self.enter_now():
            await self._wait()

    def leave(self) -> None:
        self.in_work -= 1
        if self._waiting:
            self._hand_over()

    def slot(self) -> Admission:
        """``async with admission.slot():`` holds one slot for the block (:meth:`enter` and :meth:`leave`)."""
        return self

    async def __aenter__(self) -> None:
        await self.enter()

    async def __aexit__(self, *exc_info: object) -> None:
        self.leave()

    async def _wait(self) -> None:
        limits = self.limits
        if len(self._waiting) >= limits.max_waiting:
            self.refused += 1
            raise Overloaded(
                f"The gateway is at capacity ({limits.max_in_work} requests in work and {limits.max_waiting} "
                "waiting: limits.max_in_work, limits.max_waiting); retry shortly",
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(limits.max_wait_s):
                await turn  # resolved by _hand_over, which counts this request in work
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                return  # handed a slot just as the time ran out: it is this request's
            self.refused += 1
            raise Overloaded(
                f"The gateway's work stayed full for {limits.max_wait_s:g} s (limits.max_wait_s); retry shortly",
            ) from None
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.in_work -= 1  # given a slot as it was cancelled: give it back
                self._hand_over()
            raise
        finally:
            if not turn.done():
                turn.cancel()
            with suppress(ValueError):  # handed over: already out of the queue
                self._waiting.remove(turn)

    def _hand_over(self) -> None:
        while self._waiting and self.in_work < self.limits.max_in_work:
            turn = self._waiting.popleft()
            if not turn.done():
                self.in_work += 1
                turn.set_result(None)


__all__ = ["Admission", "AdmissionLimits"]
