"""Quotas per key and per tenant, in memory (the store a single gateway uses) and against an unreachable
Redis (the failure modes): requests per minute refused with retry-after, tokens and dollars counted when a
request ends and refused once used up, the tenant's quota shared by its keys, and the store's failures
handled as configured and counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.accounting.quotas import Quotas
from gateway.config.model import LimitsConfig, QuotaConfig
from gateway.errors import QuotaExceeded, QuotaStoreUnavailable
from gateway.metrics import Metrics

NOON = 1_764_590_400.0  # 2025-12-01 12:00:00 UTC


def quotas(clock: list[float], metrics: Metrics | None = None, **limits: Any) -> Quotas:
    return Quotas(LimitsConfig.model_validate(limits), metrics or Metrics(), clock=lambda: clock[0])


async def settled(q: Quotas) -> None:
    await asyncio.gather(*q._pending)


async def test_nobody_with_a_quota_costs_nothing() -> None:
    q = quotas([NOON])
    assert q.charges(None, None, None) == []
    assert q.charges("abc", None, "acme") == []  # no key quota, no quota for acme


async def test_requests_per_minute_refused_with_retry_after() -> None:
    q = quotas([NOON])
    charges = q.charges("key1", QuotaConfig(requests_per_minute=2), None)
    first = await q.admit(charges)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert (await q.admit(charges))["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(QuotaExceeded) as refused:
        await q.admit(charges)
    error = refused.value
    assert (error.status, error.error_type, error.code) == (429, "requests", "rate_limit_exceeded")
    assert "requests per minute" in error.message
    assert "key key1" in error.message
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-reset-requests"].endswith("s")
    await q.admit(q.charges("key2", QuotaConfig(requests_per_minute=2), None))  # another key: its own count


async def test_tokens_per_minute_held_when_routed_settled_when_answered_and_reset_next_minute() -> None:
    clock = [NOON + 10]
    q = quotas(clock)
    charges = q.charges("key1", QuotaConfig(tokens_per_minute=100), None)
    await q.admit(charges)
    first = await q.hold(charges, 60, 0.0)
    assert first.headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "50s",
    }
    second = await q.hold(charges, 60, 0.0)  # 60 held of 100 before it: it may start
    with pytest.raises(QuotaExceeded) as refused:  # 120 held: none may start
        await q.hold(charges, 1, 0.0)
    assert refused.value.error_type == "tokens"
    assert refused.value.headers["retry-after"] == "50"  # the minute ends in 50 s
    assert (await q.used(charges[0]))["tokens_this_minute"] == 120  # the refused request's hold was taken back
    q.settle(first, 10, 0.0)  # the answers used less than they held: the rest is given back
    q.settle(second, 15, 0.0)
    await settled(q)
    assert (await q.used(charges[0]))["tokens_this_minute"] == 25
    await q.hold(charges, 500, 0.0)  # 25 used before it: it starts, however much it may use
    clock[0] += 50
    await q.admit(charges)
    assert (await q.hold(charges, 1, 0.0)).headers["x-ratelimit-remaining-tokens"] == "99"  # a new minute


async def test_a_daily_budget_stops_new_requests_once_spent() -> None:
    clock = [NOON]
    q = quotas(clock)
    charges = q.charges("key1", QuotaConfig(usd_per_day=0.01, usd_per_month=1.0), None)
    await q.admit(charges)
    q.settle(await q.hold(charges, 10, 0.005), 10, 0.004)
    await settled(q)
    await q.admit(charges)  # $0.004 of $0.01: still under
    q.settle(await q.hold(charges, 10, 0.005), 10, 0.007)  # used more than it held: all of it is counted
    await settled(q)
    with pytest.raises(QuotaExceeded) as refused:
        await q.admit(charges)
    error = refused.value
    assert (error.status, error.error_type, error.code) == (429, "insufficient_quota", "insufficient_quota")
    assert "$0.0110 of $0.01 this day" in error.message
    assert error.headers["retry-after"] == str(12 * 3600)  # midnight UTC
    assert (await q.used(charges[0]))["usd_this_month"] == pytest.approx(0.011)
    clock[0] += 12 * 3600  # the next day: the daily budget is fresh, the month's goes on
    await q.admit(charges)


async def test_concurrent_requests_stop_exactly_at_a_budget() -> None:
    q = quotas([NOON])
    charges = q.charges("key1", QuotaConfig(usd_per_day=1.0), None)

    async def one() -> bool:
        try:
            await q.admit(charges)  # the check before routing: spent and held so far
            await q.hold(charges, 10, 0.25)  # routed: the hold, which alone decides under concurrency
        except QuotaExceeded:
            return False
        return True

    served = await asyncio.gather(*(one() for _ in range(10)))
    assert served.count(True) == 4  # $0.25 each: the fourth brings the day to $1.00; none after it
    assert (await q.used(charges[0]))["usd_today"] == pytest.approx(1.0)


async def test_a_tenants_quota_is_shared_by_its_keys() -> None:
    q = quotas([NOON], tenants={"acme": {"requests_per_minute": 3}})
    first, second = q.charges("key1", None, "acme"), q.charges("key2", None, "acme")
    assert [c.label for c in first] == ["tenant acme"]
    for charges in (first, second, first):
        await q.admit(charges)
    with pytest.raises(QuotaExceeded) as refused:
        await q.admit(second)
    assert "tenant acme" in refused.value.message


async def test_an_unreachable_store_serves_unmetered_when_open_and_refuses_when_closed() -> None:
    metrics = Metrics()
    charges_for = QuotaConfig(requests_per_minute=1)
    opened = quotas([NOON], metrics, store="redis://127.0.0.1:1/0", on_store_error="open")
    for _ in range(3):  # beyond the limit: nothing can count
        await opened.admit(opened.charges("key1", charges_for, None))
    closed = quotas([NOON], metrics, store="redis://127.0.0.1:1/0", on_store_error="closed")
    with pytest.raises(QuotaStoreUnavailable) as refused:
        await closed.admit(closed.charges("key1", charges_for, None))
    assert refused.value.status == 503
    exposition = metrics.exposition().decode()
    assert 'turnout_quota_store_errors_total{when="open"} 3.0' in exposition
    assert 'turnout_quota_store_errors_total{when="closed"} 1.0' in exposition
