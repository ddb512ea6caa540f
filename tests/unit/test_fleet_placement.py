"""Which replica serves a request, in-process against several fault-injecting upstreams as vLLM replicas:
residency first, then the least loaded; a hot adapter spreading within its bounds; pinned and min_replicas
adapters reconciled at start and after a replica restarts; every answer naming its replica."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import (
    CHAT,
    RESPONSES,
    TEXT,
    Gateway,
    chat_body,
    completion_body,
    gateway_config,
    responses_body,
    serve_gateway,
    serve_upstream,
)
from tests.unit.fleet_support import FAST_HEALTH, NO_PROBES, adapter_state, name_of, replica_row, replicas, until_admin

REPLICA = "x-turnout-replica"


@contextlib.asynccontextmanager
async def held(gateway: Gateway, model: str) -> AsyncIterator[httpx.Response]:
    """A stream the upstream holds after its first event (``model`` starts with ``slow``): in flight on its
    replica until the test releases the upstream's gate for ``model`` and reads it, or leaves the block."""
    async with gateway.http.stream("POST", CHAT, json=chat_body(model, stream=True)) as response:
        assert response.status_code == 200
        yield response


def none_loading(adapter: str, state: dict[str, Any]) -> bool:
    return all(a["state"] != "loading" for r in state["replicas"] for a in r["adapters"] if a["name"] == adapter)


def by_name(upstreams: list[FaultyUpstream]) -> dict[str, FaultyUpstream]:
    return {name_of(u): u for u in upstreams}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body("formal")),
        (CHAT, chat_body("formal", stream=True)),
        (TEXT, completion_body("formal")),
        (TEXT, completion_body("formal", stream=True)),
        (RESPONSES, responses_body("formal")),
        (RESPONSES, responses_body("formal", stream=True)),
    ],
)
async def test_an_adapter_is_loaded_on_one_replica_and_its_requests_go_there(
    adapter_dir: Path, path: str, body: dict[str, object]
) -> None:
    async with replicas(2) as upstreams:
        config = gateway_config([u.url for u in upstreams], adapter_dir, ["formal"], vllm={"health": NO_PROBES})
        async with serve_gateway(config) as gateway:
            answers = [await gateway.http.post(path, json=body) for _ in range(5)]
            assert [a.status_code for a in answers] == [200] * 5
            homes = {a.headers[REPLICA] for a in answers}
            assert len(homes) == 1, homes  # every completion names its replica, and it is always the holder
            [home] = homes
            holder = by_name(upstreams)[home]
            [other] = [u for u in upstreams if u is not holder]
            assert holder.loads == ["formal"]
            assert other.loads == []
            assert len(holder.seen("formal")) == 5
            assert other.seen() == []
            scrape = await gateway.scrape()
            assert scrape.value("turnout_adapter_loads_total", adapter="formal", outcome="success", replica=home) == 1
            assert scrape.value("turnout_adapter_resident", adapter="formal", replica=home) == 1
            assert scrape.value("turnout_adapter_resident", adapter="formal", replica=name_of(other)) == 0
            listed = {m["id"]: m["turnout"] for m in (await gateway.http.get("/v1/models")).json()["data"]}
            assert listed["formal"]["resident"] is True
            assert listed["formal"]["replicas"] == [home]


async def test_base_model_requests_go_to_the_least_loaded_replica(adapter_dir: Path) -> None:
    async with replicas(2) as upstreams:
        config = gateway_config([u.url for u in upstreams], adapter_dir, ["slow"], vllm={"health": NO_PROBES})
        async with serve_gateway(config) as gateway:
            async with held(gateway, "slow") as first, held(gateway, "slow") as second:
                busy = first.headers[REPLICA]
                assert second.headers[REPLICA] == busy  # where the adapter is resident
                [idle] = [name_of(u) for u in upstreams if name_of(u) != busy]
                scrape = await gateway.scrape()
                assert scrape.value("turnout_replica_in_flight_requests", replica=busy) == 2
                assert scrape.value("turnout_replica_in_flight_requests", replica=idle) == 0
                for _ in range(4):
                    response = await gateway.http.post(CHAT, json=chat_body(BASE))
                    assert response.status_code == 200
                    assert response.headers[REPLICA] == idle
                by_name(upstreams)[busy].release("slow")
                for response in (first, second):
                    assert (await response.aread()).endswith(b"data: [DONE]\n\n")
            scrape = await gateway.scrape()
            assert scrape.value("turnout_replica_in_flight_requests") == 0
            # idle again: requests are shared in turn
            homes = {(await gateway.http.post(CHAT, json=chat_body(BASE))).headers[REPLICA] for _ in range(4)}
            assert homes == {busy, idle}


async def test_an_adapter_resident_on_several_replicas_goes_to_the_least_loaded_holder(adapter_dir: Path) -> None:
    async with replicas(2) as upstreams:
        config = gateway_config(
            [u.url for u in upstreams],
            adapter_dir,
            ["formal", "slow"],
            vllm={"health": NO_PROBES},
            options={"formal": {"pinned": True}},
        )
        async with serve_gateway(config) as gateway:
            await until_admin(
                gateway,
                lambda s: all(adapter_state(s, name_of(u), "formal") == "resident" for u in upstreams),
                "the pinned adapter resident on both replicas",
            )
            async with held(gateway, "slow") as one, held(gateway, "slow") as two:
                busy = one.headers[REPLICA]
                assert two.headers[REPLICA] == busy
                for _ in range(3):
                    response = await gateway.http.post(CHAT, json=chat_body("formal"))
                    assert response.headers[REPLICA] != busy
            assert [u.loads.count("formal") for u in upstreams] == [1, 1]


@pytest.mark.parametrize(("max_replicas", "spread_to"), [(2, 2), (None, 3)])
async def test_a_hot_adapter_spreads_to_more_replicas_within_its_bound(
    adapter_dir: Path, max_replicas: int | None, spread_to: int
) -> None:
    """Each held request keeps its replica busy. Once every replica holding the adapter has two more requests
    in flight than the lightest one, the adapter is loaded there in the background, while the request still
    goes to a holder; never on more replicas than max_replicas."""
    options = {"slow-hot": {"max_replicas": max_replicas}} if max_replicas else {}
    async with replicas(3) as upstreams, contextlib.AsyncExitStack() as streams:
        config = gateway_config(
            [u.url for u in upstreams], adapter_dir, ["slow-hot"], vllm={"health": NO_PROBES}, options=options
        )
        gateway = await streams.enter_async_context(serve_gateway(config))
        homes = []
        for _ in range(9):
            response = await streams.enter_async_context(held(gateway, "slow-hot"))
            homes.append(response.headers[REPLICA])
            # a load the request started in the background (before it was sent) has finished: the next request
            # finds the adapter resident there
            await until_admin(gateway, partial(none_loading, "slow-hot"), "loads under way finished")
        holding = [u for u in upstreams if "slow-hot" in u.loaded]
        assert len(holding) == spread_to
        assert all(u.loads == ["slow-hot"] for u in holding)  # loaded once each, never on demand twice
        assert {name_of(u) for u in holding} == set(homes)  # and requests went only to holders
        assert homes[:3] == [homes[0]] * 3  # the first holder takes requests until it is busier by the margin
        for upstream in upstreams:
            upstream.release("slow-hot")


async def test_pinned_and_min_replicas_adapters_are_loaded_at_start_and_after_a_restart(adapter_dir: Path) -> None:
    async with replicas(3) as upstreams:
        a, b, c = upstreams
        config = gateway_config(
            [u.url for u in upstreams],
            adapter_dir,
            ["formal", "terse"],
            vllm={"health": FAST_HEALTH},
            options={"formal": {"pinned": True}, "terse": {"min_replicas": 2}},
        )
        async with serve_gateway(config) as gateway:
            state = await until_admin(
                gateway,
                lambda s: (
                    all(adapter_state(s, name_of(u), "formal") == "resident" for u in upstreams)
                    and sum(adapter_state(s, name_of(u), "terse") == "resident" for u in upstreams) == 2
                ),
                "formal resident everywhere and terse on two replicas, without a request",
            )
            assert [u.seen() for u in upstreams] == [[], [], []]
            assert [u.loads.count("formal") for u in upstreams] == [1, 1, 1]
            assert sum(u.loads.count("terse") for u in upstreams) == 2
            assert {a["name"]: a["replicas"] for a in state["adapters"]}["formal"] == [name_of(u) for u in upstreams]

            # b restarts: vLLM forgot every adapter loaded at run time, and loads take their time coming back
            b.hold_loads = True
            b.forget()
            await b.until(lambda: b.loads.count("formal") == 2, "formal loaded again, without any request")
            # b is loading formal, but a and c have it: requests go to them, never to wait for b's load
            for _ in range(4):
                response = await gateway.http.post(CHAT, json=chat_body("formal"))
                assert response.headers[REPLICA] in (name_of(a), name_of(c))
            b.release_loads()
            await until_admin(
                gateway,
                lambda s: (
                    adapter_state(s, name_of(b), "formal") == "resident"
                    and sum(adapter_state(s, name_of(u), "terse") == "resident" for u in upstreams) == 2
                ),
                "b back to its declared adapters",
            )
            assert b.seen() == []  # repaired by the gateway, not by a client's 404
            assert all(u.unloads == [] for u in upstreams)
            scrape = await gateway.scrape()
            assert scrape.value("turnout_adapter_loads_total", adapter="formal", outcome="success") == 4


async def test_a_request_is_served_before_a_warm_copy_is_kept_when_a_replica_is_down(adapter_dir: Path) -> None:
    """Two slots per replica, formal pinned and terse kept on one replica. With the other replica down,
    pirate takes terse's slot on the survivor (it is idle); terse is not pushed back in while no slot is free,
    and it is loaded on the other replica as soon as that one is back."""
    async with contextlib.AsyncExitStack() as outer:
        stops, served = {}, []
        for _ in range(2):
            stop = await outer.enter_async_context(contextlib.AsyncExitStack())
            upstream = await stop.enter_async_context(serve_upstream())
            stops[name_of(upstream)] = stop
            served.append(upstream)
        config = gateway_config(
            [u.url for u in served],
            adapter_dir,
            ["formal", "terse", "pirate"],
            vllm={"health": FAST_HEALTH, "max_resident": 2},
            options={"formal": {"pinned": True}, "terse": {"min_replicas": 1}},
        )
        async with serve_gateway(config) as gateway:
            await until_admin(
                gateway,
                lambda s: (
                    all(adapter_state(s, name_of(u), "formal") == "resident" for u in served)
                    and any(adapter_state(s, name_of(u), "terse") == "resident" for u in served)
                ),
                "formal on both, terse on one",
            )
            [a] = [u for u in served if "terse" in u.loaded]
            [b] = [u for u in served if u is not a]
            port = int(b.url.rsplit(":", 1)[1])
            await stops[name_of(b)].aclose()
            await until_admin(gateway, lambda s: replica_row(s, name_of(b))["health"] == "ejected", "b ejected")  # type: ignore[index]
            for _ in range(3):
                response = await gateway.http.post(CHAT, json=chat_body("pirate"))
                assert response.status_code == 200, response.text
                assert response.headers[REPLICA] == name_of(a)
            reads = a.models_reads  # each probe round reads the listing, then reconciles: wait for two passes
            await a.until(lambda: a.models_reads >= reads + 3, "three probe rounds")
            assert a.loaded == {"formal", "pirate"}
            assert a.unloads == ["terse"]
            assert a.loads.count("terse") == 1, "terse is not pushed back in while there is no free slot"

            async with serve_upstream(FaultyUpstream(), port=port) as again:
                await until_admin(
                    gateway,
                    lambda s: (
                        adapter_state(s, name_of(again), "formal") == "resident"
                        and adapter_state(s, name_of(again), "terse") == "resident"
                    ),
                    "b back with formal and terse",
                )
                assert a.loaded == {"formal", "pirate"}
