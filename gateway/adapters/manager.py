"""Which adapters are loaded on one vLLM server, loading them on first use and evicting the idle ones.

State is kept per upstream (one manager per vLLM server), so several replicas each have their own
residency. Guarantees:

* single-flight: concurrent first requests for one adapter share one load call;
* capacity: at most ``max_resident`` adapters are loaded; to load another, the least recently used
  adapter with no request in flight is unloaded, and if every one is busy the request waits for one
  to become idle (up to ``capacity_wait_s``) and then gets 503;
* adapter operations on one server are serialised: loading while another load runs has crashed vLLM;
* a load runs in its own task, so a client that disconnects does not cancel it for the others;
* self-healing: when vLLM answers that it does not know an adapter (it restarted), residency is
  re-read from its ``/v1/models`` and the adapter is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from gateway.adapters.validation import BaseModelFacts, validate_adapter
from gateway.config import AdapterConfig
from gateway.errors import CapacityExhausted, InvalidAdapter, ModelNotFound, TurnoutError, UpstreamError
from gateway.metrics import Metrics
from gateway.protocol.envelope import error_message
from gateway.upstream.client import Upstream

log = logging.getLogger("turnout.adapters")


@dataclass(slots=True)
class _Adapter:
    name: str
    spec: AdapterConfig
    resident: bool = False
    in_flight: int = 0
    last_used: int = 0
    loading: asyncio.Task[None] | None = None
    loads: int = 0
    declared: bool = True  # False once a reload removed it: never routed to, evicted first
    stale: bool = False  # its files changed on reload while loaded: reload it in place on next use


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    max_rank: int
    max_resident: int
    load_timeout_s: float
    capacity_wait_s: float
    base: BaseModelFacts = field(default_factory=lambda: BaseModelFacts(frozenset()))


class Lease:
    """A request's hold on a loaded adapter: while held, the adapter is never evicted."""

    __slots__ = ("_adapter", "_manager", "_released")

    def __init__(self, manager: AdapterManager, adapter: _Adapter) -> None:
        self._manager = manager
        self._adapter = adapter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._adapter)


class AdapterManager:
    """Adapter residency on one vLLM server."""

    def __init__(
        self,
        upstream: Upstream,
        adapters: Mapping[str, AdapterConfig],
        settings: ManagerSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._adapters = {name: _Adapter(name, spec) for name, spec in adapters.items()}
        self._ops = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        self._releases = 0  # counts releases, so a waiter can tell one happened before it waited
        self._tick = 0
        self._sync_task: asyncio.Task[None] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    async def acquire(self, name: str) -> Lease:
        """Make sure ``name`` is loaded and hold it for the duration of one request."""
        adapter = self._adapters.get(name)
        if adapter is None or not adapter.declared:
            raise ModelNotFound(f"adapter {name!r} is not declared (any more)", param="model")
        adapter.in_flight += 1  # pinned first, so nothing evicts it between loading and use
        lease = Lease(self, adapter)
        try:
            await self._ensure_loaded(adapter)
        except BaseException:
            lease.release()
            raise
        self._tick += 1
        adapter.last_used = self._tick
        return lease

    def update(self, adapters: Mapping[str, AdapterConfig]) -> None:
        """Apply a reloaded configuration's adapters: add new ones, retire removed ones, note moved ones."""
        for name, spec in adapters.items():
            current = self._adapters.get(name)
            if current is None:
                self._adapters[name] = _Adapter(name, spec)
                continue
            if (current.spec.path, current.spec.served_path) != (spec.path, spec.served_path):
                current.stale = current.resident or current.loading is not None
            current.spec = spec
            current.declared = True
        for name, adapter in self._adapters.items():
            if name not in adapters:
                adapter.declared = False

    async def heal(self, name: str) -> None:
        """vLLM said it does not know ``name``: forget what we believed and re-read its adapter list."""
        adapter = self._adapters[name]
        if adapter.loading is None:
            adapter.resident = False
        await self.sync()

    async def sync(self) -> None:
        """Re-read which declared adapters vLLM holds (shared by concurrent callers)."""
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._sync())
        await asyncio.shield(self._sync_task)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every declared adapter with its residency, for ``/admin/adapters`` and the CLI."""
        return [
            {
                "name": a.name,
                "path": str(a.spec.path),
                "resident": a.resident,
                "loading": a.loading is not None,
                "in_flight": a.in_flight,
                "loads": a.loads,
            }
            for a in self._adapters.values()
            if a.declared or a.resident
        ]

    def is_resident(self, name: str) -> bool:
        adapter = self._adapters.get(name)
        return adapter is not None and adapter.resident

    # -- internals ------------------------------------------------------------------------------

    def _release(self, adapter: _Adapter) -> None:
        adapter.in_flight -= 1
        if adapter.in_flight == 0:
            self._releases += 1
            self._slot_freed.set()

    async def _ensure_loaded(self, adapter: _Adapter) -> None:
        while not adapter.resident or adapter.stale:
            if adapter.loading is None:
                task = asyncio.create_task(self._load(adapter), name=f"load-adapter-{adapter.name}")
                adapter.loading = task
                task.add_done_callback(partial(_loaded, adapter))
            try:
                await asyncio.shield(adapter.loading)
            except TurnoutError as exc:
                # every waiter of one load gets the load's error: each its own instance, since a request's
                # response headers and error count travel on it
                raise exc.for_another_request() from exc

    async def _sync(self) -> None:
        # Under the operations lock: no load or unload can finish between reading vLLM's list and
        # applying it, so the answer is never older than what it overwrites.
        async with self._ops:
            status, body = await self.upstream.request("GET", "/v1/models")
            if status != 200:
                raise UpstreamError(f"vLLM answered {status} to /v1/models")
            try:
                listed = {m["id"] for m in orjson.loads(body).get("data", []) if isinstance(m, dict) and "id" in m}
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                raise UpstreamError("vLLM's /v1/models answer is not the expected JSON") from exc
            for adapter in self._adapters.values():
                adapter.resident = adapter.name in listed
            self._publish()

    async def _load(self, adapter: _Adapter) -> None:
        """Load ``adapter``, counting the outcome."""
        outcome = "failure"
        try:
            await self._load_once(adapter)
            outcome = "success"
        except CapacityExhausted:
            outcome = "no_capacity"  # not the adapter's fault: every slot was busy
            raise
        finally:
            if self.metrics is not None:
                self.metrics.adapter_loads.labels(adapter.name, outcome).inc()
            self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            for adapter in self._adapters.values():
                self.metrics.adapter_resident.labels(adapter.name).set(1 if adapter.resident else 0)

    async def _load_once(self, adapter: _Adapter) -> None:
        settings = self.settings
        spec = adapter.spec  # the files checked are the files loaded, even if a reload moves them meanwhile
        # Checked before anything is sent: a bad adapter never reaches vLLM.
        await asyncio.to_thread(
            validate_adapter, adapter.name, Path(spec.path), max_rank=settings.max_rank, base=settings.base
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.capacity_wait_s
        while True:
            releases = self._releases
            async with self._ops:
                if adapter.resident and not adapter.stale:
                    return
                if adapter.resident or await self._make_room(adapter):
                    await self._send_load(adapter, spec)
                    return
            # Every slot is busy: wait for a release outside the lock, so other adapters' operations
            # go on and each waiter's deadline is its own.
            await self._wait_for_release(releases, deadline, adapter)

    async def _wait_for_release(self, seen: int, deadline: float, adapter: _Adapter) -> None:
        loop = asyncio.get_running_loop()
        while self._releases == seen:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CapacityExhausted(
                    f"all {self.settings.max_resident} adapter slots are busy serving requests; "
                    f"adapter {adapter.name!r} could not be loaded in {self.settings.capacity_wait_s:g} s"
                )
            self._slot_freed.clear()  # no await before the wait below, so no release can slip between
            try:
                await asyncio.wait_for(self._slot_freed.wait(), remaining)
            except TimeoutError:
                continue  # the loop re-checks the deadline and raises

    async def _send_load(self, adapter: _Adapter, spec: AdapterConfig) -> None:
        """Load (or reload in place) the adapter's files; the caller holds the operations lock."""
        settings = self.settings
        served_path = spec.served_path or str(spec.path)
        payload: dict[str, Any] = {"lora_name": adapter.name, "lora_path": served_path}
        if adapter.stale:
            payload["load_inplace"] = True
        started = time.perf_counter()
        status, body = await self.upstream.request(
            "POST", "/v1/load_lora_adapter", payload, timeout_s=settings.load_timeout_s
        )
        if status == 200 and self.metrics is not None:  # vLLM's own time (not validation, not a slot wait)
            self.metrics.adapter_load_seconds.labels(adapter.name).observe(time.perf_counter() - started)
        if status == 200 or (status == 400 and b"already been loaded" in body):
            adapter.resident = True
            # moved by a reload while loading: load the new files in place on next use
            adapter.stale = (adapter.spec.path, adapter.spec.served_path) != (spec.path, spec.served_path)
            adapter.loads += 1
            log.info("adapter %s loaded on %s", adapter.name, self.upstream.url)
            return
        if status in (400, 404, 422):
            raise InvalidAdapter(
                f"vLLM refused to load adapter {adapter.name!r} from {served_path}: {error_message(body)[0]}",
                param="model",
            )
        raise UpstreamError(f"vLLM failed to load adapter {adapter.name!r} ({status}): {error_message(body)[0]}")

    async def _make_room(self, incoming: _Adapter) -> bool:
        """Unload idle adapters until one slot is free; ``False`` when every resident one is busy."""
        while sum(a.resident for a in self._adapters.values()) >= self.settings.max_resident:
            idle = [a for a in self._adapters.values() if a.resident and a.in_flight == 0 and a is not incoming]
            if not idle:
                return False
            # adapters a reload removed go first, then the least recently used
            await self._unload(min(idle, key=lambda a: (a.declared, a.last_used)))
        return True

    async def _unload(self, adapter: _Adapter) -> None:
        status, body = await self.upstream.request(
            "POST", "/v1/unload_lora_adapter", {"lora_name": adapter.name}, timeout_s=self.settings.load_timeout_s
        )
        if status not in (200, 404):  # 404: already gone, which is what we wanted
            raise UpstreamError(f"vLLM failed to unload adapter {adapter.name!r} ({status}): {error_message(body)[0]}")
        adapter.resident = False
        if self.metrics is not None:
            reason = "eviction" if adapter.declared else "removed"
            self.metrics.adapter_unloads.labels(adapter.name, reason).inc()
            if adapter.declared:
                self.metrics.adapter_evictions.labels(adapter.name).inc()
        self._publish()
        log.info("adapter %s evicted from %s", adapter.name, self.upstream.url)


def _loaded(adapter: _Adapter, _task: asyncio.Task[None]) -> None:
    adapter.loading = None
