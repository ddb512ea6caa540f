"""A replica that fails often but never three times in a row is ejected by its error rate (``breaker.*``), and
a replica whose failures are rare stays in rotation; a return clears the record."""

from __future__ import annotations

import aiohttp

from gateway.adapters.manager import ManagerSettings
from gateway.config.serving import VllmConfig
from gateway.errors import UpstreamUnavailable
from gateway.fleet.fleet import Fleet
from gateway.metrics import Metrics


def down() -> UpstreamUnavailable:
    """What a request that could not reach the replica raises (mapped from the connection error)."""
    try:
        try:
            raise ConnectionRefusedError("connection refused")
        except ConnectionRefusedError as cause:
            raise UpstreamUnavailable("cannot connect to vllm at 10.0.0.2:8000") from cause
    except UpstreamUnavailable as exc:
        return exc


async def fleet_of(session: aiohttp.ClientSession) -> Fleet:
    config = VllmConfig.model_validate({"replicas": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"], "model": "tiny"})
    settings = ManagerSettings(max_rank=8, max_resident=2, load_timeout_s=5, capacity_wait_s=1)
    return Fleet(config, {}, settings, session, Metrics(), error_rate=0.5, window=8)


async def test_half_of_its_requests_failing_ejects_a_replica_never_failing_three_in_a_row() -> None:
    async with aiohttp.ClientSession() as session:
        fleet = await fleet_of(session)
        flaky = fleet._add("http://10.0.0.2:8000")  # not started: no probes, only the outcomes below
        for i in range(8):
            if i % 2:
                fleet.failed(flaky, down(), None)
            else:
                fleet.answered(flaky)
            if not flaky.healthy:
                break
        assert not flaky.healthy
        assert flaky.failures == 1  # never more than one in a row: the error rate ejected it
        assert flaky.ejections == 1
        fleet._returned(flaky, "a probe answered")
        assert not flaky.outcomes  # back with a clean record


async def test_rare_failures_keep_a_replica_in_rotation() -> None:
    async with aiohttp.ClientSession() as session:
        fleet = await fleet_of(session)
        steady = fleet._add("http://10.0.0.2:8000")
        for i in range(40):
            if i % 4 == 3:
                fleet.failed(steady, down(), None)  # one in four
            else:
                fleet.answered(steady)
        assert steady.healthy
        assert steady.ejections == 0
