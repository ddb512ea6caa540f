"""Replicas failing, in-process: ejected after consecutive failures and returned by a good probe, requests
tried on another replica before their first byte (refused, timed out), a replica that dies mid-stream, a
replica that cannot load an adapter, and how ``/admin/adapters`` and ``turnout adapters status`` tell it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.fleet.placement import rank
from tests.support.faulty_upstream import BASE, FaultyUpstream
from tests.support.inprocess import CHAT, chat_body, events, gateway_config, nowhere, serve_gateway, serve_upstream
from tests.unit.fleet_support import (
    FAST_HEALTH,
    NO_PROBES,
    adapter_state,
    admin,
    name_of,
    replica_row,
    replicas,
    until_admin,
)

REPLICA = "x-turnout-replica"


def health(state: dict[str, Any], name: str) -> str | None:
    row = replica_row(state, name)
    return None if row is None else str(row["health"])


async def test_a_replica_that_stops_is_ejected_and_returns_when_it_answers_again(adapter_dir: Path) -> None:
    async with replicas(1) as [a], contextlib.AsyncExitStack() as stopping:
        b = await stopping.enter_async_context(serve_upstream())
        port = int(b.url.rsplit(":", 1)[1])
        config = gateway_config([a.url, b.url], adapter_dir, vllm={"health": FAST_HEALTH})
        async with serve_gateway(config) as gateway:
            await until_admin(gateway, lambda s: health(s, name_of(b)) == "healthy", "b healthy at first")
            await stopping.aclose()  # b stops: its port refuses connections
            state = await until_admin(gateway, lambda s: health(s, name_of(b)) == "ejected", "b ejected")
            assert replica_row(state, name_of(b))["ejections"] == 1  # type: ignore[index]
            scrape = await gateway.scrape()
            assert scrape.value("turnout_replica_healthy", replica=name_of(b)) == 0
            assert scrape.value("turnout_replica_healthy", replica=name_of(a)) == 1
            assert scrape.value("turnout_replica_ejections_total", replica=name_of(b)) == 1
            for _ in range(6):
                response = await gateway.http.post(CHAT, json=chat_body(BASE))
                assert response.status_code == 200
                assert response.headers[REPLICA] == name_of(a)

            async with serve_upstream(FaultyUpstream(), port=port) as again:
                await until_admin(gateway, lambda s: health(s, name_of(again)) == "healthy", "b back after a probe")
                homes = {(await gateway.http.post(CHAT, json=chat_body(BASE))).headers[REPLICA] for _ in range(4)}
                assert homes == {name_of(a), name_of(again)}
                scrape = await gateway.scrape()
                assert scrape.value("turnout_replica_healthy", replica=name_of(again)) == 1
                assert scrape.value("turnout_replica_ejections_total", replica=name_of(again)) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_to_a_replica_that_refuses_connections_is_served_by_another(
    adapter_dir: Path, stream: bool
) -> None:
    """No probe runs after the first: the requests alone find the dead replica, fail over, and get it ejected."""
    async with replicas(1) as [a]:
        dead = nowhere()
        dead_name = dead.partition("://")[2]
        config = gateway_config([a.url, dead], adapter_dir, ["formal"], vllm={"health": NO_PROBES})
        async with serve_gateway(config) as gateway:
            sent = 0
            while health(await admin(gateway), dead_name) != "ejected":
                assert sent < 12, "three failures in a row eject it; half the base requests try it first"
                for model in (BASE, "formal"):
                    response = await gateway.http.post(CHAT, json=chat_body(model, stream=stream))
                    sent += 1
                    assert response.status_code == 200, response.text
                    assert response.headers[REPLICA] == name_of(a)
                    assert "x-turnout-fallback-from" not in response.headers  # the same target, another replica
            row = replica_row(await admin(gateway), dead_name)
            assert row is not None
            assert (row["consecutive_failures"], row["ejections"]) == (3, 1)
            assert "cannot connect" in row["last_error"]
            for _ in range(4):  # ejected: not tried any more
                assert (await gateway.http.post(CHAT, json=chat_body(BASE))).headers[REPLICA] == name_of(a)
            row = replica_row(await admin(gateway), dead_name)
            assert row is not None
            assert row["consecutive_failures"] == 3
            assert len(a.seen()) == sent + 4


async def test_a_replica_that_does_not_answer_in_time_is_left_for_another(adapter_dir: Path) -> None:
    async with replicas(2) as [a, b]:
        b.stall = True  # b takes requests and never answers
        config = gateway_config(
            [a.url, b.url],
            adapter_dir,
            vllm={"health": {**NO_PROBES, "eject_after": 1}, "read_timeout_s": 1.0},
        )
        async with serve_gateway(config) as gateway:
            answers = await asyncio.gather(
                *(gateway.http.post(CHAT, json=chat_body(BASE, stream=stream)) for stream in (False, True) * 2)
            )
            assert [r.status_code for r in answers] == [200] * 4
            assert {r.headers[REPLICA] for r in answers} == {name_of(a)}
            assert b.seen(), "some request was tried on b first"
            # the gateway hung up on it (b notices on its own time: a busy machine may take a moment)
            await b.until(lambda: all(seen.disconnected for seen in b.seen()), "the gateway hang up")
            state = await admin(gateway)
            assert health(state, name_of(b)) == "ejected"
            b.stall = False


async def test_a_replica_gone_mid_stream_ends_that_stream_with_an_error_and_later_requests_go_elsewhere(
    adapter_dir: Path,
) -> None:
    stops = {}
    async with contextlib.AsyncExitStack() as outer:
        served = []
        for _ in range(2):
            stop = await outer.enter_async_context(contextlib.AsyncExitStack())
            upstream = await stop.enter_async_context(serve_upstream())
            stops[name_of(upstream)] = stop
            served.append(upstream)
        config = gateway_config([u.url for u in served], adapter_dir, ["slow"], vllm={"health": NO_PROBES})
        async with serve_gateway(config) as gateway:
            async with gateway.http.stream("POST", CHAT, json=chat_body("slow", stream=True)) as stream:
                gone = stream.headers[REPLICA]
                [home] = [u for u in served if name_of(u) == gone]
                [other] = [u for u in served if u is not home]
                home.crash()
                body = await stream.aread()
            *_, last = events(body)
            assert last.startswith(b'data: {"error"'), body  # the SSE error event, after what had been sent
            row = replica_row(await admin(gateway), gone)
            assert row is not None
            assert row["consecutive_failures"] == 1
            assert "broke off" in row["last_error"]

            await stops[gone].aclose()  # and it is gone for good
            other.release("slow")
            for stream_it in (True, False, True):
                response = await gateway.http.post(CHAT, json=chat_body("slow", stream=stream_it))
                assert response.status_code == 200
                assert response.headers[REPLICA] == name_of(other)
                assert b"error" not in response.content
            assert other.loads == ["slow"]  # the first of them found the adapter's replica gone, and loaded it here


def preferring(first: str, then: str) -> str:
    """An adapter name whose own first choice of replica (rendezvous ranking) is ``first``."""
    return next(f"lora-{n}" for n in range(1000) if rank(f"lora-{n}", first) > rank(f"lora-{n}", then))


async def test_a_replica_that_cannot_load_an_adapter_is_marked_and_the_request_is_served_elsewhere(
    adapter_dir: Path, tmp_path: Path
) -> None:
    async with replicas(2) as [a, b]:
        adapter = preferring(name_of(a), name_of(b))  # so the first request tries a
        a.refuse_loads.add(adapter)
        config = gateway_config([a.url, b.url], adapter_dir, [adapter], vllm={"health": NO_PROBES})
        async with serve_gateway(config) as gateway:
            for _ in range(3):
                response = await gateway.http.post(CHAT, json=chat_body(adapter))
                assert response.status_code == 200, response.text
                assert response.headers[REPLICA] == name_of(b)
                assert "x-turnout-fallback-from" not in response.headers
            assert a.loads == [adapter], "tried once on a, then not again during its back-off"
            assert b.loads == [adapter]
            state = await admin(gateway)
            assert adapter_state(state, name_of(a), adapter) == "failed"
            [row] = [r for r in replica_row(state, name_of(a))["adapters"] if r["name"] == adapter]  # type: ignore[index]
            assert "loading the adapter crashed" in row["failed"]["reason"]  # vLLM's own words
            assert row["failed"]["retry_in_s"] > 0
            scrape = await gateway.scrape()
            failed = scrape.value("turnout_adapter_loads_total", adapter=adapter, replica=name_of(a), outcome="failure")
            loaded = scrape.value("turnout_adapter_loads_total", adapter=adapter, replica=name_of(b), outcome="success")
            assert (failed, loaded) == (1, 1)

            # the command line says the same, through the running gateway
            path = tmp_path / "turnout.yaml"
            path.write_text(yaml.safe_dump({"vllm": {"replicas": [a.url, b.url], "model": BASE}}))
            table = await asyncio.to_thread(_status, str(path), gateway.url)
            assert table.exit_code == 1, table.output
            lines = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line.split()}
            assert f"{adapter}=failed" in lines[name_of(a)]
            assert f"{adapter}=resident" in lines[name_of(b)]
            assert "loading the adapter crashed" in table.stdout
            assert f"failed to load: {adapter}@{name_of(a)}" in table.stderr
            as_json = await asyncio.to_thread(_status, str(path), gateway.url, "--json")
            assert json.loads(as_json.stdout)["replicas"][0]["replica"] == name_of(a)


async def test_adapters_status_exit_status(adapter_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    async with replicas(2) as [a, b]:
        path.write_text(yaml.safe_dump({"vllm": {"replicas": [a.url, b.url], "model": BASE}}))
        config = gateway_config(
            [a.url, b.url], adapter_dir, ["formal"], vllm={"health": FAST_HEALTH}, options={"formal": {"pinned": True}}
        )
        async with serve_gateway(config) as gateway:
            await until_admin(
                gateway,
                lambda s: all(adapter_state(s, name_of(u), "formal") == "resident" for u in (a, b)),
                "formal pinned on both",
            )
            result = await asyncio.to_thread(_status, str(path), gateway.url)
            assert result.exit_code == 0, result.output
            assert result.stdout.splitlines()[0].split() == ["REPLICA", "HEALTH", "IN", "FLIGHT", "ADAPTERS"]
            assert sum("healthy" in line and "formal=resident" in line for line in result.stdout.splitlines()) == 2
    assert (await asyncio.to_thread(_status, str(path), nowhere())).exit_code == 1  # no gateway to ask
    path.write_text("vllm: {}\n")
    assert (await asyncio.to_thread(_status, str(path), nowhere())).exit_code == 2


def _status(config: str, url: str, *extra: str) -> Any:
    return CliRunner().invoke(app, ["adapters", "status", "--config", config, "--gateway", url, *extra])


async def test_a_vllm_that_accepts_but_never_answers_does_not_hold_up_start_up(adapter_dir: Path) -> None:
    async with replicas(1) as [wedged]:
        wedged.stall_models = True  # the connection is accepted; /v1/models never answered
        config = gateway_config(
            [wedged.url], adapter_dir, vllm={"health": {**NO_PROBES, "timeout_s": 0.5}, "read_timeout_s": 600}
        )
        # The start-up read is bounded by health.timeout_s, not by the 600 s a completion may take to be read:
        # without that bound this block would wait ten minutes (the safety bound below turns that into a failure).
        async with asyncio.timeout(60), serve_gateway(config) as gateway:
            assert wedged.models_reads >= 1
            answer = await gateway.http.get("/health")
            assert answer.status_code == 200
