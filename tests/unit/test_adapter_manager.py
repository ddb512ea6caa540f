"""AdapterManager's concurrency logic against a small in-process stand-in for vLLM's LoRA API.

These cover interleavings the real server cannot be made to produce on demand (a load held open while
requests pile up, a cancelled caller); the same behaviours run against real vLLM in tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.adapters.manager import FREE, PINNED, WANTED, AdapterManager, ManagerSettings
from gateway.config import AdapterConfig
from gateway.errors import CapacityExhausted, InvalidAdapter, UpstreamError
from gateway.upstream.client import Upstream, UpstreamSettings


@dataclass
class FakeLoraApi:
    loaded: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    broken: bool = False  # loads fail with a server error

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "base"}, *({"id": n, "parent": "base"} for n in self.loaded)]})

    async def load(self, request: web.Request) -> web.Response:
        name = (await request.json())["lora_name"]
        self.calls.append(("load", name))
        self.called.set()
        await self.gate.wait()
        if self.broken:
            return web.json_response({"error": {"message": "engine dead"}}, status=500)
        if name in self.loaded:
            return web.json_response(
                {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}, status=400
            )
        self.loaded.add(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        name = (await request.json())["lora_name"]
        self.calls.append(("unload", name))
        if name not in self.loaded:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        self.loaded.discard(name)
        return web.Response(text="Success")


def _adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (path / "adapter_model.bin").write_bytes(b"weights")
    return path


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeLoraApi, str]]:
    api = FakeLoraApi()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield api, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _manager(
    url: str,
    session: aiohttp.ClientSession,
    root: Path,
    *,
    max_resident: int = 2,
    capacity_wait_s: float = 5.0,
    evict: bool = True,
    retry_after_s: float = 5.0,
    keep: Callable[[str], int] | None = None,
) -> AdapterManager:
    upstream = Upstream(UpstreamSettings(url, None, connect_timeout_s=2, read_timeout_s=10), session)
    adapters = {n: AdapterConfig(path=_adapter_dir(root, n)) for n in ("a", "b", "c")}
    settings = ManagerSettings(
        max_rank=8,
        max_resident=max_resident,
        load_timeout_s=10,
        capacity_wait_s=capacity_wait_s,
        evict=evict,
        retry_after_s=retry_after_s,
    )
    return AdapterManager(upstream, adapters, settings, keep=keep)


async def test_waiters_share_one_load_even_when_the_first_caller_is_cancelled(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path)
        first = asyncio.create_task(manager.acquire("a"))
        others = [asyncio.create_task(manager.acquire("a")) for _ in range(5)]
        await api.called.wait()
        first.cancel()  # the client who triggered the load goes away
        api.gate.set()
        leases = await asyncio.gather(*others)
        assert api.calls == [("load", "a")]
        assert manager.is_resident("a")
        for lease in leases:
            lease.release()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert [row["in_flight"] for row in manager.snapshot() if row["name"] == "a"] == [0]


async def test_a_busy_adapter_is_never_evicted_and_capacity_waits_for_a_release(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, max_resident=1)
        held = await manager.acquire("a")
        waiting = asyncio.create_task(manager.acquire("b"))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "b must wait while a is busy, not evict it"
        # the wait does not hold the operations lock: reading residency from the server still works
        await asyncio.wait_for(manager.sync(), timeout=5)
        assert not waiting.done()
        assert ("unload", "a") not in api.calls
        held.release()
        lease = await waiting
        assert api.loaded == {"b"}
        assert api.calls[-2:] == [("unload", "a"), ("load", "b")]
        lease.release()


async def test_capacity_exhausted_when_nothing_is_released(fake: tuple[FakeLoraApi, str], tmp_path: Path) -> None:
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, max_resident=1, capacity_wait_s=0)
        held = await manager.acquire("a")
        with pytest.raises(CapacityExhausted):
            await manager.acquire("b")
        assert api.loaded == {"a"}
        held.release()
        (await manager.acquire("b")).release()
        assert api.loaded == {"b"}


async def test_heal_relearns_residency_from_the_server(fake: tuple[FakeLoraApi, str], tmp_path: Path) -> None:
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path)
        (await manager.acquire("a")).release()
        (await manager.acquire("b")).release()
        api.loaded.clear()  # the server restarted
        await manager.heal("a")
        assert not manager.is_resident("a")
        assert not manager.is_resident("b")
        (await manager.acquire("a")).release()
        assert api.loaded == {"a"}


async def test_an_invalid_adapter_is_never_sent(fake: tuple[FakeLoraApi, str], tmp_path: Path) -> None:
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path)
        (tmp_path / "a" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64}')
        with pytest.raises(InvalidAdapter, match="rank 64"):
            await manager.acquire("a")
        assert api.calls == []
        assert manager.snapshot()[0]["in_flight"] == 0


async def test_waiters_of_a_failed_load_each_get_an_error_of_their_own(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.broken = True
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path)
        waiters = [asyncio.create_task(manager.acquire("a")) for _ in range(4)]
        await api.called.wait()
        api.gate.set()
        errors = await asyncio.gather(*waiters, return_exceptions=True)
    assert api.calls == [("load", "a")]  # one load, shared
    assert all(isinstance(error, UpstreamError) for error in errors)
    assert len({id(error) for error in errors}) == len(errors)  # a request's headers and count travel on it
    first, second = errors[0], errors[1]
    assert isinstance(first, UpstreamError)
    assert isinstance(second, UpstreamError)
    first.add_headers({"x-turnout-policy": "one"})
    assert first.claim_count()
    assert second.headers == {}
    assert second.claim_count()  # counted on its own, once
    assert second.message == first.message
    assert [row["in_flight"] for row in manager.snapshot() if row["name"] == "a"] == [0]


async def test_a_failed_load_is_not_tried_again_on_this_server_during_its_back_off(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.gate.set()
    api.broken = True
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, retry_after_s=60)
        with pytest.raises(UpstreamError, match="engine dead"):
            await manager.acquire("a")
        with pytest.raises(UpstreamError, match="engine dead"):  # the recorded failure, vLLM not asked
            await manager.acquire("a")
        assert api.calls == [("load", "a")]
        [row] = [r for r in manager.snapshot() if r["name"] == "a"]
        assert row["state"] == "failed"
        assert "engine dead" in row["failed"]["reason"]
        assert 55 < row["failed"]["retry_in_s"] <= 60
        assert not await manager.preload("a")  # nor by the fleet's own loads
        assert api.calls == [("load", "a")]
        api.broken = False
        (await manager.acquire("b")).release()  # another adapter is not held back by a's failure
        assert manager.is_resident("b")
        with pytest.raises(UpstreamError, match="engine dead"):  # a still is, until its back-off has passed
            await manager.acquire("a")
        assert api.calls == [("load", "a"), ("load", "b")]


async def test_after_its_back_off_a_failed_load_is_tried_again_and_success_clears_it(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.gate.set()
    api.broken = True
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, retry_after_s=0)
        with pytest.raises(UpstreamError):
            await manager.acquire("a")
        api.broken = False
        (await manager.acquire("a")).release()
        assert api.calls == [("load", "a"), ("load", "a")]
        [row] = [r for r in manager.snapshot() if r["name"] == "a"]
        assert (row["state"], row["failed"]) == ("resident", None)


async def test_without_eviction_nothing_is_ever_unloaded(fake: tuple[FakeLoraApi, str], tmp_path: Path) -> None:
    """eviction: vllm: past max_resident the gateway loads anyway and leaves making room to vLLM's LRU."""
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, max_resident=1, evict=False, capacity_wait_s=0)
        for name in ("a", "b", "c"):
            (await manager.acquire(name)).release()
        assert api.calls == [("load", "a"), ("load", "b"), ("load", "c")]
        assert api.loaded == {"a", "b", "c"}
        assert not manager.has_free_slot()
        assert manager.can_make_room()


async def test_a_pinned_adapter_is_never_evicted_and_a_wanted_one_only_when_nothing_else_is_idle(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.gate.set()
    need = {"a": PINNED, "b": WANTED}
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, max_resident=2, capacity_wait_s=0, keep=lambda n: need.get(n, FREE))
        (await manager.acquire("a")).release()
        (await manager.acquire("b")).release()
        assert not await manager.preload("c")  # the fleet's own loads take a free slot or none
        assert api.loaded == {"a", "b"}
        (await manager.acquire("c")).release()  # a request is served first: b, only wanted, makes room
        assert api.loaded == {"a", "c"}
        assert ("unload", "a") not in api.calls
        assert await manager.preload("b", evict=True)  # told to evict: c is idle and not needed
        assert api.loaded == {"a", "b"}
        need["b"] = PINNED
        assert not manager.can_make_room()
        with pytest.raises(CapacityExhausted, match="busy serving requests \\(or pinned\\)"):
            await manager.acquire("c")


async def test_sync_says_which_adapters_the_server_forgot_and_counts_other_gateways_adapters(
    fake: tuple[FakeLoraApi, str], tmp_path: Path
) -> None:
    api, url = fake
    api.gate.set()
    async with aiohttp.ClientSession() as session:
        manager = _manager(url, session, tmp_path, max_resident=3)
        (await manager.acquire("a")).release()
        (await manager.acquire("b")).release()
        api.loaded = {"b", "someone-elses"}  # restarted and reloaded by another gateway, say
        assert await manager.sync() == {"a"}
        assert (manager.is_resident("a"), manager.is_resident("b")) == (False, True)
        assert manager.occupied() == 2  # b and the adapter this gateway does not declare
        assert await manager.sync() == set()
