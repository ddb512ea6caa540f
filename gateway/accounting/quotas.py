"""Quotas per API key and per tenant: requests and tokens per minute, US dollars per day and per month.

Before a completion request is routed, every quota that applies to it (its key's, its tenant's) is checked;
the first one that is used up refuses it with 429, ``retry-after`` (when the full window or period ends) and
the OpenAI envelope naming the limit. When the request ends, what it used is counted against them: its
tokens, and the dollars the ledger meters it at (the same figure as ``x-turnout-cost-usd``, streams and
fallbacks to OpenAI included). A request that starts under a budget finishes; none starts once it is spent.

* Requests per minute: a sliding window (the ``limits`` library's sliding window counter), counted when the
  request is admitted.
* Tokens per minute: the current minute (UTC), counted when the request is answered (its usage is not known
  before); checked on admission.
* Dollars per day and per month: the current UTC day and month, counted in micro-dollars when answered;
  checked on admission.

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
from dataclasses import dataclass
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


class Quotas:
    def __init__(self, config: LimitsConfig, metrics: Metrics, clock: Any = time.time) -> None:
        self._tenants = dict(config.tenants)
        self._fail_open = config.on_store_error == "open"
        self._metrics = metrics
        self._clock = clock
        self.storage: Storage = (
            RedisStorage(config.store, wrap_exceptions=True, key_prefix="turnout")
            if config.store
            else MemoryStorage(wrap_exceptions=True)
        )
        self._requests = SlidingWindowCounterRateLimiter(self.storage)
        self._pending: set[asyncio.Task[None]] = set()  # charges being written (kept referenced until done)

    def use(self, config: LimitsConfig) -> None:
        """New tenants' quotas and failure mode (a reload); the counters and their store stay (a new
        limits.store takes a restart)."""
        self._tenants = dict(config.tenants)
        self._fail_open = config.on_store_error == "open"

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

    async def admit(self, charges: Sequence[Charge]) -> None:
        """Refuse (429) if any quota is used up; count the request against the per-minute request limits."""
        try:
            for charge in charges:
                await self._check(charge)
        except QuotaExceeded:
            raise
        except Exception as exc:  # the store: limits wraps its errors, Redis' own may still come through
            self._store_failed(exc)

    async def _check(self, charge: Charge) -> None:
        quota, now = charge.quota, self._clock()
        minute, day, month = _periods(now)
        if quota.usd_per_month is not None:
            await self._budget(charge, "month", month, quota.usd_per_month, _month_end(now) - now)
        if quota.usd_per_day is not None:
            await self._budget(charge, "day", day, quota.usd_per_day, 86_400 - now % 86_400)
        if quota.tokens_per_minute is not None:
            used = await self.storage.get(_key("tokens", charge, minute))
            if used >= quota.tokens_per_minute:
                raise QuotaExceeded(
                    f"Rate limit reached for {charge.label} on tokens per minute: limit {quota.tokens_per_minute}, "
                    f"used {used}",
                    kind="tokens",
                    retry_after_s=math.ceil(60 - now % 60),
                )
        if quota.requests_per_minute is not None:
            item = RateLimitItemPerMinute(quota.requests_per_minute)
            if not await self._requests.hit(item, "requests", charge.scope, charge.who):
                stats = await self._requests.get_window_stats(item, "requests", charge.scope, charge.who)
                raise QuotaExceeded(
                    f"Rate limit reached for {charge.label} on requests per minute: limit {quota.requests_per_minute}",
                    kind="requests",
                    retry_after_s=math.ceil(stats.reset_time - time.time()),  # the library's own clock
                )

    async def _budget(self, charge: Charge, period: str, name: str, dollars: float, left_s: float) -> None:
        spent = await self.storage.get(_key(f"usd-{period}", charge, name))
        if spent >= dollars * MICRO:
            raise QuotaExceeded(
                f"Budget used up for {charge.label}: ${spent / MICRO:.4f} of ${dollars:g} this {period} (UTC)",
                kind="insufficient_quota",
                retry_after_s=math.ceil(left_s),
            )

    def charge(self, charges: Sequence[Charge], tokens: int, dollars: float) -> None:
        """Count what a request used (called when it ends; the writes go on in the background)."""
        if not charges or (tokens <= 0 and dollars <= 0):
            return
        task = asyncio.get_running_loop().create_task(self._record(list(charges), tokens, dollars))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, charges: list[Charge], tokens: int, dollars: float) -> None:
        now = self._clock()
        minute, day, month = _periods(now)
        micro = round(dollars * MICRO)
        try:
            for charge in charges:
                quota = charge.quota
                if quota.tokens_per_minute is not None and tokens > 0:
                    await self.storage.incr(_key("tokens", charge, minute), 120, tokens)
                if quota.usd_per_day is not None and micro > 0:
                    await self.storage.incr(_key("usd-day", charge, day), 2 * 86_400, micro)
                if quota.usd_per_month is not None and micro > 0:
                    await self.storage.incr(_key("usd-month", charge, month), 32 * 86_400, micro)
        except Exception as exc:  # counted; the request itself is over
            self._metrics.quota_store_errors.labels("charge").inc()
            log.warning("could not count a request against its quotas: %s", exc)

    async def used(self, charge: Charge) -> dict[str, float]:
        """What ``charge``'s quota has used in the current minute, day and month (for /admin and tests)."""
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


__all__ = ["MICRO", "Charge", "Quotas"]
