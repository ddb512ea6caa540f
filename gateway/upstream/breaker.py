"""A circuit breaker for one upstream (an OpenAI model): stop sending it requests while it keeps failing, so
that the policy's fallbacks answer at once instead of every request waiting on the same failure.

Closed, it lets every request through and watches the outcomes; it opens after ``failures`` failures in a
row, or when at least ``error_rate`` of the last ``window`` outcomes (and at least half a window of them)
were failures. Open, it refuses at once for ``open_s``; then it lets one request through (half-open): a
success closes it, a failure opens it again. Only failures that are the upstream's (it cannot be reached,
it timed out, it answered 5xx) count; a request the upstream refused (4xx) is a success for the breaker.

Written here rather than taken from a library: the ones on PyPI (pybreaker, aiobreaker, purgatory) wrap a
call in their own decorator or state store, where this one must see outcomes the dispatcher classifies and
report its state to the gateway's metrics; it is forty lines of state.

May import: nothing of the gateway.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int
    error_rate: float
    window: int
    open_s: float


class Breaker:
    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.state = CLOSED
        self._on_change = on_change
        self._clock = clock
        self._in_a_row = 0
        self._recent: deque[bool] = deque(maxlen=settings.window)  # True: failed
        self._retry_at = 0.0
        self._trial = False  # the half-open trial is in flight
        self.opened = 0  # times it opened
        self.last_error = ""

    def allow(self) -> bool:
        """May a request be sent now? (Open: no, until ``open_s`` has passed; then one trial.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() < self._retry_at:
                return False
            self._set(HALF_OPEN)
        if self._trial:
            return False
        self._trial = True
        return True

    def retry_in_s(self) -> float:
        return max(0.0, self._retry_at - self._clock()) if self.state == OPEN else 0.0

    def succeeded(self) -> None:
        self._in_a_row = 0
        self._recent.append(False)
        if self.state != CLOSED:
            self._trial = False
            self._recent.clear()
            self._set(CLOSED)

    def failed(self, error: str) -> None:
        self.last_error = error
        self._in_a_row += 1
        self._recent.append(True)
        settings = self.settings
        if self.state == HALF_OPEN:
            self._open()
            return
        failed = sum(self._recent)
        enough = len(self._recent) >= max(1, settings.window // 2)
        if self._in_a_row >= settings.failures or (enough and failed >= settings.error_rate * len(self._recent)):
            self._open()

    def abandoned(self) -> None:
        """The request ended with no outcome (the client left): a trial may be tried again."""
        self._trial = False

    def describe(self) -> dict[str, object]:
        return {
            "upstream": self.name,
            "state": self.state,
            "failures_in_a_row": self._in_a_row,
            "recent_error_rate": round(sum(self._recent) / len(self._recent), 3) if self._recent else 0.0,
            "opened": self.opened,
            "retry_in_s": round(self.retry_in_s(), 3),
            "last_error": self.last_error or None,
        }

    def _open(self) -> None:
        self._trial = False
        self._retry_at = self._clock() + self.settings.open_s
        self.opened += 1
        self._set(OPEN)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.name, state)


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker", "BreakerSettings"]
