"""Replicas found by DNS and replicas shared by several gateways, in-process.

Discovery is driven by a resolver the test answers for (the gateway's resolver seam): the replicas are
fault-injecting upstreams on 127.0.0.2, .3 and .4, all on one port, as the pods behind a headless Service are.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.discovery import SystemResolver
from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import (
    CHAT,
    TEXT,
    Gateway,
    chat_body,
    completion_body,
    gateway_config,
    serve_gateway,
    serve_upstream,
)
from tests.unit.fleet_support import (
    FAST_HEALTH,
    AnsweringResolver,
    adapter_state,
    admin,
    name_of,
    replicas,
    shared_port,
    until_admin,
)

REPLICA = "x-turnout-replica"
HOSTS = ["127.0.0.2", "127.0.0.3"]
DNS = "turnout-vllm.test.svc.cluster.local"


def listed(state: dict[str, Any]) -> dict[str, str]:
    return {r["replica"]: r["health"] for r in state["replicas"]}


async def test_replicas_found_by_dns_join_get_their_pinned_adapters_and_leave_after_draining(
    adapter_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = shared_port(HOSTS)
    a_name, b_name = (f"{host}:{port}" for host in HOSTS)
    resolver = AnsweringResolver(DNS, [HOSTS[1]])
    config = gateway_config(
        None,
        adapter_dir,
        ["formal", "slow"],
        vllm={"discovery": {"dns": DNS, "port": port, "interval_s": 0.05}, "health": FAST_HEALTH},
        options={"formal": {"pinned": True}},
    )
    async with (
        serve_upstream(FaultyUpstream(), host=HOSTS[0], port=port) as a,
        serve_upstream(FaultyUpstream(), host=HOSTS[1], port=port) as b,
        serve_gateway(config, resolver=resolver) as gateway,
    ):
        state = await until_admin(
            gateway, lambda s: adapter_state(s, b_name, "formal") == "resident", "the one replica found has formal"
        )
        assert listed(state) == {b_name: "healthy"}
        async with gateway.http.stream("POST", CHAT, json=chat_body("slow", stream=True)) as held:
            assert held.headers[REPLICA] == b_name  # the only replica

            # a second pod is ready: it joins, and gets the pinned adapter at once
            resolver.addresses = [HOSTS[0], HOSTS[1]]
            state = await until_admin(
                gateway, lambda s: adapter_state(s, a_name, "formal") == "resident", "the new replica has formal"
            )
            assert listed(state) == {a_name: "healthy", b_name: "healthy"}
            assert a.seen() == []  # loaded by the gateway, not by a request

            # DNS fails: the replicas last known stay, and the log and a metric say so
            caplog.set_level(logging.WARNING, logger="turnout.fleet")
            before = await gateway.scrape()
            resolver.addresses = None
            await gateway.grown(before, "turnout_discovery_failures_total", 1)
            assert listed(await admin(gateway)) == {a_name: "healthy", b_name: "healthy"}
            assert f"could not resolve {DNS}" in caplog.text
            assert "keeping the 2 replica(s) last known" in caplog.text

            # b leaves the Service while a stream is in flight on it: drained, not cut
            resolver.addresses = [HOSTS[0]]
            await until_admin(gateway, lambda s: listed(s).get(b_name) == "draining", "b draining")
            for body in (chat_body(BASE), chat_body("formal"), completion_body("slow")):
                a.release("slow")
                response = await gateway.http.post(TEXT if "prompt" in body else CHAT, json=body)
                assert response.status_code == 200
                assert response.headers[REPLICA] == a_name
            scrape = await gateway.scrape()
            assert scrape.value("turnout_replica_healthy", replica=b_name) == 0
            assert scrape.value("turnout_replica_in_flight_requests", replica=b_name) == 1
            b.release("slow")
            answer = await held.aread()
        assert answer.endswith(b"data: [DONE]\n\n")
        assert b"error" not in answer
        state = await until_admin(gateway, lambda s: b_name not in listed(s), "b gone once its last request ended")
        assert listed(state) == {a_name: "healthy"}
        scrape = await gateway.scrape()
        assert not [labels for labels in scrape.series("turnout_replica_healthy") if ("replica", b_name) in labels]
        assert not [
            labels for labels in scrape.series("turnout_adapter_resident") if ("replica", b_name) in labels
        ]  # the label stays bounded as pods come and go
        assert b.unloads == []


class BreakingResolver(AnsweringResolver):
    """Fails in a way no resolver should (a bug), a few times, then answers."""

    def __init__(self, name: str, addresses: list[str], breaks: int) -> None:
        super().__init__(name, addresses)
        self.breaks = breaks

    async def resolve(self, host: str, port: int) -> list[str]:
        if self.breaks:
            self.breaks -= 1
            raise RuntimeError("the resolver broke")
        return await super().resolve(host, port)


async def test_discovery_that_breaks_unexpectedly_goes_on(adapter_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with replicas(1) as [upstream]:
        host, port = name_of(upstream).split(":")
        resolver = BreakingResolver(DNS, [host], breaks=3)
        config = gateway_config(
            None, adapter_dir, vllm={"discovery": {"dns": DNS, "port": int(port), "interval_s": 0.05}}
        )
        async with serve_gateway(config, resolver=resolver) as gateway:
            await until_admin(gateway, lambda s: listed(s) == {name_of(upstream): "healthy"}, "found after all")
            response = await gateway.http.post(CHAT, json=chat_body(BASE))
            assert response.headers[REPLICA] == name_of(upstream)
        assert resolver.breaks == 0
        assert f"discovering the replicas of {DNS} failed" in caplog.text
        assert "RuntimeError: the resolver broke" in caplog.text


async def test_the_system_resolver_reads_the_hosts_file() -> None:
    assert "127.0.0.1" in await SystemResolver().resolve("localhost", 8000)
    with pytest.raises(socket.gaierror):
        await SystemResolver().resolve("no-such-name.invalid", 8000)


async def test_an_adapter_vllms_own_lru_evicted_is_loaded_again_without_an_unload(adapter_dir: Path) -> None:
    """eviction: vllm: the gateway never unloads; vLLM's LRU forgets an adapter, the 404 is healed."""
    async with replicas(1) as [upstream]:
        upstream.lru = 1
        config = gateway_config(upstream.url, adapter_dir, ["a1", "a2"], vllm={"eviction": "vllm", "max_resident": 1})
        async with serve_gateway(config) as gateway:
            for model in ("a1", "a2", "a1", "a2"):
                response = await gateway.http.post(CHAT, json=chat_body(model))
                assert response.status_code == 200, response.text
            assert upstream.unloads == []
            assert upstream.evicted == ["a1", "a2", "a1"]
            assert upstream.loads == ["a1", "a2", "a1", "a2"]
            assert [s.model for s in upstream.seen()] == ["a1", "a2", "a1", "a1", "a2", "a2"]  # 404, then again
            scrape = await gateway.scrape()
            assert scrape.value("turnout_adapter_unloads_total") == 0


async def _traffic(gateway: Gateway, models: list[str], seed: int) -> list[int]:
    rng = random.Random(seed)
    statuses: list[int] = []

    async def one(model: str) -> None:
        stream = rng.random() < 0.5
        response = await gateway.http.post(CHAT, json=chat_body(model, stream=stream))
        assert b"error" not in response.content or response.status_code != 200, response.text
        statuses.append(response.status_code)

    picks = [rng.choice(models) for _ in range(80)]
    for start in range(0, len(picks), 8):  # eight at a time
        await asyncio.gather(*(one(model) for model in picks[start : start + 8]))
    return statuses


async def test_two_gateways_share_two_replicas_without_failures_or_thrash(adapter_dir: Path) -> None:
    """As vLLM does with adapters loaded at run time, the upstreams keep every adapter loaded and listed (vLLM's
    LRU only moves weights in and out of its cache); with eviction: vllm neither gateway ever unloads, and
    neither loads an adapter twice on one replica, whatever the other did meanwhile."""
    adapters = ["a1", "a2", "a3"]
    async with replicas(2) as upstreams:
        config = gateway_config(
            [u.url for u in upstreams],
            adapter_dir,
            adapters,
            vllm={"eviction": "vllm", "max_resident": 2, "health": FAST_HEALTH},
        )
        async with serve_gateway(config) as one, serve_gateway(config) as two:
            models = [BASE, *adapters]
            for seeds in ((1, 2), (3, 4)):
                rounds = await asyncio.gather(_traffic(one, models, seeds[0]), _traffic(two, models, seeds[1]))
                assert [set(statuses) for statuses in rounds] == [{200}, {200}]
            for upstream in upstreams:
                assert upstream.unloads == []
                loads = {name: upstream.loads.count(name) for name in adapters}
                assert all(count <= 2 for count in loads.values()), (name_of(upstream), loads)  # one per gateway
            for gateway in (one, two):
                scrape = await gateway.scrape()
                assert scrape.value("turnout_adapter_unloads_total") == 0
                for upstream in upstreams:
                    for name in adapters:
                        loaded = scrape.value("turnout_adapter_loads_total", adapter=name, replica=name_of(upstream))
                        assert loaded <= 1, (name, name_of(upstream), loaded)
                state = await admin(gateway)
                assert {r["replica"]: r["health"] for r in state["replicas"]} == {
                    name_of(u): "healthy" for u in upstreams
                }
