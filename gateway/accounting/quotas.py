"""Quotas per API key and per tenant: requests and tokens per minute, US dollars per day and per month.

Before a request is routed, every quota that applies to it (its key's, its tenant's) is checked and the
request counted against the requests per minute; the first quota used up refuses it with 429, ``retry-after``
(when the full window or period ends) and the OpenAI envelope naming the limit.

Once it is routed, the request **holds** what it may use against the token and dollar quotas: its prompt and
its answer's ``max_tokens`` (or ``limits.reserve_output_tokens``) at the dearest price among the targets its
decision may try. A hold is one atomic increment per counter; the request is refused, and the hold taken
back, if the counter already stood at the limit before it. So concurrent requests, on one gateway or
several sharing Redis, cannot all slip in under the same figure: the one whose hold crosses it is the last
one served. When the request ends its hold is **settled**: replaced by what it really used, its tokens and
the dollars the ledger meters it at (the same figure as ``x-turnout-cost-usd``, streams and fallbacks to
OpenAI included), in the same minute, day and month it was held in.

* Requests per minute: a sliding window (the ``limits`` library's sliding window counter).
* Tokens per minute: the current minute (UTC).
* Dollars per day and per month: the current UTC day and month, counted in micro-dollars.

Each answer to a caller with a quota carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers, for its tightest request and token limits.

Counters live in this process's memory, or in Redis (``limits.store``) so that every gateway replica naming
it enforces one limit (``limits``' Redis storage: atomic increments with expiry, no home-made protocol). If
the store cannot be reached, ``limits.on_store_error`` decides: ``open`` serves the request unmetered,
``closed`` refuses it with 503; either way it is counted in ``turnout_quota_store_errors_total``.

May import: ``gateway.config``, ``gateway.errors``, ``gateway.metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.config.model import LimitsConfig, QuotaConfig
from gateway.errors import QuotaExceeded, QuotaStoreUnavailable
from gateway.metrics import Metrics

log = logging.getLogger("turnout.quotas")

MICRO = 1_000_000  # dollars are counted in millionths: the stores count integers


@dataclass(frozen=True, slots=True)
class Charge:
    """One quota a request is held to: whose (``key`` and a key id, or ``tenant`` and its name) and what."""

    scope: str
    who: str
    quota: QuotaConfig

    @property
    def label(self) -> str:
        return f"{self.scope} {self.who}"


@dataclass(slots=True)
class Hold:
    """What a routed request holds against its quotas until it ends: each counter it raised (its key, what
    it counts, ``tokens`` or ``usd``, by how much, and the key's expiry) and the rate-limit headers for its
    answer."""

    raised: list[tuple[str, str, int, int]] = field(default_factory=list)  # key, what, amount, expiry
    headers: dict[str, str] = field(default_factory=dict)


UNMETERED = Hold()  # the hold of a request served while the store cannot be reached (fail open)


class Quotas:
    def __init__(self, config: LimitsConfig, metrics: Metrics, clock: Any = time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self.use(config)
        self.storage: Storage = (
            RedisStorage(config.store, wrap_exceptions=True, key_prefix="turnout")
            if config.store
            else MemoryStorage(wrap_exceptions=True)
        )
        self._requests = SlidingWindowCounterRateLimiter(self.storage)
        self._pending: set[asyncio.Task[None]] = set()  # settlements being written (kept referenced until done)

    def use(self, config: LimitsConfig) -> None:
        """New tenants' quotas, failure mode and answer reserve (a reload); the counters and their store
        stay (a new limits.store takes a restart)."""
        self._tenants = dict(config.tenants)
        self._fail_open = config.on_store_error == "open"
        self.reserve_output_tokens = config.reserve_output_tokens

    def charges(self, key_id: str | None, key_quota: QuotaConfig | None, tenant: str | None) -> list[Charge]:
        """The quotas a caller is held to (none for most gateways: no cost on the hot path)."""
        if key_quota is None and not self._tenants:
            return []
        found = []
        if key_quota is not None and key_id is not None:
            found.append(Charge("key", key_id, key_quota))
        tenant_quota = self._tenants.get(tenant) if tenant is not None else None
        if tenant_quota is not None and tenant is not None:
            found.append(Charge("tenant", tenant, tenant_quota))
        return found

    async def admit(self, charges: Sequence[Charge]) -> dict[str, str]:
        """Refuse (429) if any quota is used up; count the request against the per-minute request limits.
        Returns the ``x-ratelimit-*-requests`` headers of the tightest request limit (none without one)."""
        headers: dict[str, str] = {}
        try:
            for charge in charges:
                await self._check(charge, headers)
        except QuotaExceeded as exc:
            exc.add_headers(headers)
            raise
        except Exception as exc:  # the store: limits wraps its errors, Redis' own may still come through
            self._store_failed(exc)
            return {}
        return headers

    async def _check(self, charge: Charge, headers: dict[str, str]) -> None:
        quota, now = charge.quota, self._clock()
        minute, day, month = _periods(now)
        if quota.usd_per_month is not None:
            spent = await self.storage.get(_key("usd-month", charge, month))
            _refuse_budget(charge, "month", spent, quota.usd_per_month, _month_end(now) - now)
        if quota.usd_per_day is not None:
            spent = await self.storage.get(_key("usd-day", charge, day))
            _refuse_budget(charge, "day", spent, quota.usd_per_day, 86_400 - now % 86_400)
        if quota.tokens_per_minute is not None:
            used = await self.storage.get(_key("tokens", charge, minute))
            _refuse_tokens(charge, used, quota.tokens_per_minute, now)
        if quota.requests_per_minute is not None:
            item = RateLimitItemPerMinute(quota.requests_per_minute)
            admitted = await self._requests.hit(item, "requests", charge.scope, charge.who)
            stats = await self._requests.get_window_stats(item, "requests", charge.scope, charge.who)
            reset_s = max(1, math.ceil(stats.reset_time - time.time()))  # the library's own clock
            _tightest(headers, "requests", quota.requests_per_minute, stats.remaining, reset_s)
            if not admitted:
                raise QuotaExceeded(
                    f"Rate limit reached for {charge.label} on requests per minute: limit {quota.requests_per_minute}",
                    kind="requests",
                    retry_after_s=reset_s,
                )

    async def hold(self, charges: Sequence[Charge], tokens: int, dollars: float) -> Hold:
        """Hold ``tokens`` and ``dollars`` (what a routed request may use) against the token and dollar
        quotas: refused (429, the hold taken back) where a counter already stood at its limit."""
        now = self._clock()
        minute, day, month = _periods(now)
        micro = math.ceil(dollars * MICRO)
        hold = Hold()
        try:
            for charge in charges:
                quota = charge.quota
                if quota.usd_per_month is not None:
                    key = _key("usd-month", charge, month)
                    spent = await self._raise(hold, key, "usd", micro, 32 * 86_400)
                    _refuse_budget(charge, "month", spent, quota.usd_per_month, _month_end(now) - now)
                if quota.usd_per_day is not None:
                    spent = await self._raise(hold, _key("usd-day", charge, day), "usd", micro, 2 * 86_400)
                    _refuse_budget(charge, "day", spent, quota.usd_per_day, 86_400 - now % 86_400)
                if quota.tokens_per_minute is not None:
                    used = await self._raise(hold, _key("tokens", charge, minute), "tokens", tokens, 120)
                    _refuse_tokens(charge, used, quota.tokens_per_minute, now)
                    left = max(0, quota.tokens_per_minute - used - tokens)
                    _tightest(hold.headers, "tokens", quota.tokens_per_minute, left, math.ceil(60 - now % 60))
        except QuotaExceeded as exc:
            await self._take_back(hold)
            exc.add_headers(hold.headers)
            raise
        except Exception as exc:  # the store
            await self._take_back(hold)
            self._store_failed(exc)
            return UNMETERED
        return hold

    async def _raise(self, hold: Hold, key: str, what: str, amount: int, expiry: int) -> int:
        """Raise one counter by ``amount`` for ``hold``; returns where it stood before (atomically: two
        requests never see the same figure)."""
        value = await self.storage.incr(key, expiry, amount)
        hold.raised.append((key, what, amount, expiry))
        return value - amount

    async def _take_back(self, hold: Hold) -> None:
        try:
            for key, _, amount, expiry in hold.raised:
                if amount:
                    await self.storage.incr(key, expiry, -amount)
        except Exception as exc:
            self._metrics.quota_store_errors.labels("charge").inc()
            log.warning("could not take back a refused request's hold on its quotas: %s", exc)
        hold.raised.clear()

    def settle(self, hold: Hold, tokens: int, dollars: float) -> None:
        """Replace ``hold`` by what the request used (called when it ends; written in the background)."""
        if not hold.raised:
            return
        task = asyncio.get_running_loop().create_task(self._settle(hold, tokens, round(dollars * MICRO)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, hold: Hold, tokens: int, micro: int) -> None:
        try:
            for key, what, amount, expiry in hold.raised:
                difference = (tokens if what == "tokens" else micro) - amount
                if difference:
                    await self.storage.incr(key, expiry, difference)
        except Exception as exc:  # counted; the request itself is over
            self._metrics.quota_store_errors.labels("charge").inc()
            log.warning("could not count a request against its quotas: %s", exc)

    async def used(self, charge: Charge) -> dict[str, float]:
        """What ``charge``'s quota has used (or holds) in the current minute, day and month (for /admin and
        tests)."""
        minute, day, month = _periods(self._clock())
        return {
            "tokens_this_minute": await self.storage.get(_key("tokens", charge, minute)),
            "usd_today": await self.storage.get(_key("usd-day", charge, day)) / MICRO,
            "usd_this_month": await self.storage.get(_key("usd-month", charge, month)) / MICRO,
        }

    def _store_failed(self, exc: Exception) -> None:
        mode = "open" if self._fail_open else "closed"
        self._metrics.quota_store_errors.labels(mode).inc()
        log.warning("the quota store cannot be reached (%s): limits.on_store_error is %s", exc, mode)
        if not self._fail_open:
            raise QuotaStoreUnavailable(
                "quotas cannot be checked (their store cannot be reached) and limits.on_store_error is closed"
            ) from exc

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _refuse_budget(charge: Charge, period: str, spent: int, dollars: float, left_s: float) -> None:
    if spent >= dollars * MICRO:
        raise QuotaExceeded(
            f"Budget used up for {charge.label}: ${spent / MICRO:.4f} of ${dollars:g} this {period} (UTC), "
            "spent or held by requests under way",
            kind="insufficient_quota",
            retry_after_s=math.ceil(left_s),
        )


def _refuse_tokens(charge: Charge, used: int, limit: int, now: float) -> None:
    if used >= limit:
        raise QuotaExceeded(
            f"Rate limit reached for {charge.label} on tokens per minute: limit {limit}, used {used} "
            "(with what requests under way hold)",
            kind="tokens",
            retry_after_s=math.ceil(60 - now % 60),
        )


def _tightest(headers: dict[str, str], what: str, limit: int, remaining: int, reset_s: int) -> None:
    """OpenAI's rate-limit headers for ``what``, kept for the limit with the least remaining."""
    held = headers.get(f"x-ratelimit-remaining-{what}")
    if held is not None and int(held) <= remaining:
        return
    headers[f"x-ratelimit-limit-{what}"] = str(limit)
    headers[f"x-ratelimit-remaining-{what}"] = str(max(0, remaining))
    headers[f"x-ratelimit-reset-{what}"] = _duration(reset_s)


def _duration(seconds: int) -> str:
    """A reset time as OpenAI writes it: ``59s``, ``6m0s``, ``23h59m59s``."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _key(what: str, charge: Charge, period: str) -> str:
    return f"quota/{what}/{charge.scope}/{charge.who}/{period}"


def _periods(now: float) -> tuple[str, str, str]:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y%m%d%H%M"), moment.strftime("%Y%m%d"), moment.strftime("%Y%m")


def _month_end(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return following.timestamp()


__all__ = ["MICRO", "UNMETERED", "Charge", "Hold", "Quotas"]
