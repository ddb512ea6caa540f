"""Which adapters are loaded on one vLLM server, loading them on first use and evicting the idle ones.

State is kept per upstream (one manager per vLLM replica; :mod:`gateway.fleet` holds one per replica and
chooses between them). Guarantees:

* single-flight: concurrent first requests for one adapter share one load call;
* capacity (``evict``, the ``gateway`` eviction mode): at most ``max_resident`` adapters are loaded; to
  load another, the least recently used adapter with no request in flight is unloaded. What the fleet
  ``keep``s is spared: a pinned adapter is never unloaded, and one the fleet wants here for its
  ``min_replicas`` only when no other idle adapter is left (a request is served before a warm copy is
  kept). If every one is busy the request waits for one to become idle (up to ``capacity_wait_s``) and
  then gets 503. Loads the fleet makes on its own (:meth:`AdapterManager.preload`) never wait, and evict
  only when told to (a pinned adapter coming back). Without ``evict`` (the ``vllm`` mode, for several
  gateways sharing replicas) nothing is ever unloaded: vLLM's own LRU evicts;
* adapter operations on one server are serialised: loading while another load runs has crashed vLLM;
* a load runs in its own task, so a client that disconnects does not cancel it for the others;
* a load vLLM refuses or fails marks the adapter failed on this server, with vLLM's reason: requests do
  not try it here again until a back-off (doubling from ``retry_after_s`` to ``retry_max_s``) has passed;
* self-healing: when vLLM answers that it does not know an adapter (it restarted, or its LRU evicted
  it), residency is re-read from its ``/v1/models`` and the adapter is loaded again;
* versions: an adapter served from the adapter store is loaded under its version's own vLLM name
  (``NAME@sha256-...``). When its served name moves to another version, new requests go to the new one
  while those in flight finish on the old one, which is then unloaded (with ``evict``; else vLLM's LRU
  drops it, since nothing asks for it any more). Going back to a version still loaded reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from gateway.adapters.served import unresolved_reason
from gateway.adapters.validation import BaseModelFacts, validate_adapter
from gateway.config import AdapterConfig
from gateway.errors import CapacityExhausted, InvalidAdapter, ModelNotFound, TurnoutError, UpstreamError
from gateway.metrics import Metrics
from gateway.protocol.envelope import error_message
from gateway.upstream.client import Upstream

log = logging.getLogger("turnout.adapters")

# How much the fleet needs an adapter on this server (what ``keep`` answers): an eviction spares the higher.
FREE, WANTED, PINNED = 0, 1, 2


@dataclass(slots=True)
class _Adapter:
    name: str  # the served name; a version replaced by another goes by its vLLM name
    spec: AdapterConfig
    lora: str = ""  # the name vLLM knows it by (``spec.vllm_name``)
    resident: bool = False
    in_flight: int = 0
    last_used: int = 0
    loading: asyncio.Task[None] | None = None
    loads: int = 0
    declared: bool = True  # False once a reload removed it (or another version replaced it): never routed to,
    # evicted first
    stale: bool = False  # its files changed on reload while loaded: reload it in place on next use
    failure: TurnoutError | None = None  # what the last load on this server failed with (vLLM's answer)
    failures: int = 0  # consecutive failed loads, for the back-off
    retry_at: float = 0.0  # event-loop time before which a failed load is not tried again here

    def __post_init__(self) -> None:
        self.lora = self.spec.vllm_name(self.name)


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    max_rank: int
    max_resident: int
    load_timeout_s: float
    capacity_wait_s: float
    base: BaseModelFacts = field(default_factory=lambda: BaseModelFacts(frozenset()))
    evict: bool = True  # unload idle adapters to make room (eviction: gateway); False: never unload (vllm)
    retry_after_s: float = 5.0  # back-off after a failed load, doubled on each failure in a row
    retry_max_s: float = 300.0


class Lease:
    """A request's hold on a loaded adapter: while held, the adapter is never evicted. ``then`` runs once
    with the release (what else the request held on the same server: its place in the server's load).
    ``lora`` is the name to send to vLLM, ``version`` the store version (None for an adapter's own path)."""

    __slots__ = ("_adapter", "_manager", "_released", "lora", "then", "version")

    def __init__(self, manager: AdapterManager, adapter: _Adapter) -> None:
        self._manager = manager
        self._adapter = adapter
        self._released = False
        self.lora = adapter.lora
        self.version = adapter.spec.version
        self.then: Callable[[], None] | None = None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._adapter)
            if self.then is not None:
                self.then()


class AdapterManager:
    """Adapter residency on one vLLM server."""

    def __init__(
        self,
        upstream: Upstream,
        adapters: Mapping[str, AdapterConfig],
        settings: ManagerSettings,
        metrics: Metrics | None = None,
        *,
        replica: str | None = None,
        keep: Callable[[str], int] | None = None,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self.replica = replica or upstream.url.partition("://")[2]  # the metrics' replica label
        self._keep = keep  # how much the fleet needs each adapter here: FREE, WANTED or PINNED
        self._foreign = 0  # adapters vLLM lists that this gateway does not declare (another gateway's)
        self._adapters = {name: _Adapter(name, spec) for name, spec in adapters.items()}
        self._ops = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        self._releases = 0  # counts releases, so a waiter can tell one happened before it waited
        self._tick = 0
        self._sync_task: asyncio.Task[set[str]] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    async def acquire(self, name: str) -> Lease:
        """Make sure ``name`` is loaded and hold it for the duration of one request."""
        adapter = self._adapters.get(name)
        if adapter is None or not adapter.declared:
            raise ModelNotFound(f"adapter {name!r} is not declared (any more)", param="model")
        failure = self.blocked(name)
        if failure is not None:
            raise failure.for_another_request()
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

    def update(self, adapters: Mapping[str, AdapterConfig]) -> set[str]:
        """Apply a reloaded configuration's adapters (or a store name moved to another version): add new ones,
        retire removed ones and replaced versions, note moved files. Returns the adapters whose version changed
        while the old one was loaded here (worth loading the new one here now)."""
        moved = set()
        for name, spec in adapters.items():
            lora = spec.vllm_name(name)
            current = self._adapters.get(name)
            if current is not None and current.lora != lora:
                if current.resident or current.loading is not None:
                    moved.add(name)
                    self._retire(current)
                elif current.in_flight:
                    self._retire(current)
                else:
                    del self._adapters[name]
                current = None
            if current is None:
                revived = self._adapters.get(lora) if lora != name else None  # back to a version still loaded
                if revived is not None and not revived.declared:
                    del self._adapters[lora]
                    revived.name, revived.spec, revived.declared = name, spec, True
                    self._adapters[name] = revived
                else:
                    self._adapters[name] = _Adapter(name, spec)
                continue
            if (current.spec.path, current.spec.served_path) != (spec.path, spec.served_path):
                current.stale = current.resident or current.loading is not None
            current.spec = spec
            current.declared = True
        for name, adapter in self._adapters.items():
            if name not in adapters:
                adapter.declared = False
        self._drop_retired()
        return moved

    async def heal(self, name: str) -> set[str]:
        """vLLM said it does not know ``name``: forget what we believed and re-read its adapter list.
        Returns the adapters it turned out to have forgotten (``name`` among them)."""
        adapter = self._adapters[name]
        lost = {name} if adapter.resident and adapter.loading is None else set()
        if adapter.loading is None:
            adapter.resident = False
        return lost | await self.sync()

    async def sync(self, timeout_s: float | None = None) -> set[str]:
        """Re-read which declared adapters vLLM holds (shared by concurrent callers). Returns those believed
        loaded that vLLM no longer lists: it restarted, or its own LRU evicted them."""
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._sync(timeout_s))
        return set(await asyncio.shield(self._sync_task))

    async def preload(self, name: str, *, evict: bool = False) -> bool:
        """Load ``name`` without a request waiting for it (declared state, a hot adapter spreading): never
        waits for a slot, takes a free one unless ``evict`` (then it may unload idle adapters that are not
        pinned), and a failure is logged (and marked), not raised. True when it is loaded."""
        adapter = self._adapters.get(name)
        if adapter is None or not adapter.declared or adapter.spec.path is None or self.blocked(name) is not None:
            return False
        adapter.in_flight += 1
        lease = Lease(self, adapter)
        try:
            await self._ensure_loaded(adapter, wait=False, spare=PINNED if evict else FREE)
        except CapacityExhausted:
            return False
        except TurnoutError as exc:
            log.warning("adapter %s could not be loaded on %s: %s", name, self.upstream.url, exc.message)
            return False
        finally:
            lease.release()
        return True

    def busy(self) -> bool:
        """A load or unload is under way on this server (its listing is read again once it ends)."""
        return self._ops.locked()

    def holds(self, name: str) -> bool:
        """Loaded here, or being loaded (a request sent here now waits for that load, not another)."""
        adapter = self._adapters.get(name)
        return adapter is not None and (adapter.resident or adapter.loading is not None)

    def blocked(self, name: str) -> TurnoutError | None:
        """The error the last load of ``name`` here failed with, while its back-off lasts."""
        adapter = self._adapters.get(name)
        if adapter is None or adapter.failure is None:
            return None
        if asyncio.get_running_loop().time() >= adapter.retry_at:
            return None
        return adapter.failure

    def occupied(self) -> int:
        """Slots taken: adapters loaded or loading (this gateway's), and those vLLM lists for others."""
        return self._foreign + sum(1 for a in self._adapters.values() if a.resident or a.loading is not None)

    def has_free_slot(self) -> bool:
        return self.occupied() < self.settings.max_resident

    def can_make_room(self) -> bool:
        """A load here would find a slot: a free one, one an idle adapter gives up, or vLLM's own LRU's."""
        if not self.settings.evict or self.has_free_slot():
            return True
        return any(a.resident and a.in_flight == 0 and self._need(a) < PINNED for a in self._adapters.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """Every declared adapter with its residency, for ``/admin/adapters`` and the CLI."""
        now = asyncio.get_running_loop().time()
        rows = []
        for a in self._adapters.values():
            if not (a.declared or a.resident):
                continue
            failed = a.failure is not None and now < a.retry_at
            state = (
                "loading" if a.loading is not None else "resident" if a.resident else "failed" if failed else "absent"
            )
            row: dict[str, Any] = {
                "name": a.name,
                "vllm_name": a.lora,
                "version": a.spec.version,
                "path": None if a.spec.path is None else str(a.spec.path),
                "state": state,
                "resident": a.resident,
                "loading": a.loading is not None,
                "in_flight": a.in_flight,
                "loads": a.loads,
                "failed": None,
            }
            if a.failure is not None:
                row["failed"] = {"reason": a.failure.message, "retry_in_s": round(max(0.0, a.retry_at - now), 1)}
            rows.append(row)
        return rows

    def forget_metrics(self) -> None:
        """This server left the fleet: drop its series (see ``Metrics.forget_replica``)."""
        if self.metrics is not None:
            self.metrics.forget_replica(self.replica, self._adapters)

    def is_resident(self, name: str) -> bool:
        adapter = self._adapters.get(name)
        return adapter is not None and adapter.resident

    # -- internals ------------------------------------------------------------------------------

    def _release(self, adapter: _Adapter) -> None:
        adapter.in_flight -= 1
        if adapter.in_flight == 0:
            self._releases += 1
            self._slot_freed.set()
            if not adapter.declared and adapter.spec.store is not None:
                self._drop_retired()  # the last request on a replaced version ended

    def _retire(self, adapter: _Adapter) -> None:
        """Another version replaces ``adapter`` under its served name: it stays, under its vLLM name, for the
        requests it is serving (and for a quick way back), and is unloaded once idle."""
        del self._adapters[adapter.name]
        self._adapters.pop(adapter.lora, None)
        adapter.name, adapter.declared = adapter.lora, False
        self._adapters[adapter.lora] = adapter
        log.info("adapter %s replaced on %s: draining %d request(s)", adapter.lora, self.replica, adapter.in_flight)

    def _drop_retired(self) -> None:
        """Forget replaced versions that are not loaded (or that a declared adapter serves too); unload the
        idle loaded ones (with ``evict``)."""
        serving = {a.lora for a in self._adapters.values() if a.declared}
        for key, adapter in list(self._adapters.items()):
            if adapter.declared or adapter.spec.store is None or key != adapter.lora:
                continue  # not a replaced version (a removed adapter is evicted first, when room is needed)
            if adapter.in_flight or adapter.loading is not None:
                continue
            if not adapter.resident or adapter.lora in serving:
                del self._adapters[key]
                if self.metrics is not None:
                    self.metrics.forget_replica(self.replica, [key])
            elif self.settings.evict:
                self._unload_soon(adapter)

    def _unload_soon(self, adapter: _Adapter) -> None:
        async def unload() -> None:
            async with self._ops:
                if adapter.resident and adapter.in_flight == 0 and not adapter.declared:
                    with contextlib.suppress(TurnoutError):
                        await self._unload(adapter)
            adapter.loading = None  # (the done callback runs only after this task ends)
            self._drop_retired()

        if adapter.loading is None:
            adapter.loading = asyncio.create_task(unload(), name=f"unload-adapter-{adapter.lora}")
            adapter.loading.add_done_callback(partial(_loaded, adapter))

    def _need(self, adapter: _Adapter) -> int:
        if not adapter.declared or self._keep is None:
            return FREE
        return self._keep(adapter.name)

    async def _ensure_loaded(self, adapter: _Adapter, *, wait: bool = True, spare: int = PINNED) -> None:
        """``spare``: room is made by unloading only idle adapters the fleet needs less than this."""
        while not adapter.resident or adapter.stale:
            if adapter.loading is None:
                task = asyncio.create_task(self._load(adapter, wait, spare), name=f"load-adapter-{adapter.name}")
                adapter.loading = task
                task.add_done_callback(partial(_loaded, adapter))
            try:
                await asyncio.shield(adapter.loading)
            except TurnoutError as exc:
                # every waiter of one load gets the load's error: each its own instance, since a request's
                # response headers and error count travel on it
                raise exc.for_another_request() from exc

    async def _sync(self, timeout_s: float | None) -> set[str]:
        # Under the operations lock: no load or unload can finish between reading vLLM's list and
        # applying it, so the answer is never older than what it overwrites.
        async with self._ops:
            status, body = await self.upstream.request("GET", "/v1/models", timeout_s=timeout_s)
            if status != 200:
                raise UpstreamError(f"vLLM answered {status} to /v1/models")
            try:
                models = [m for m in orjson.loads(body).get("data", []) if isinstance(m, dict) and "id" in m]
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                raise UpstreamError("vLLM's /v1/models answer is not the expected JSON") from exc
            listed = {m["id"] for m in models}
            lost = set()
            for adapter in self._adapters.values():
                if adapter.resident and adapter.lora not in listed:
                    lost.add(adapter.name)
                adapter.resident = adapter.lora in listed
            # LoRA adapters (entries with a parent) loaded by someone else still take this server's slots
            ours = {adapter.lora for adapter in self._adapters.values()}
            self._foreign = sum(1 for m in models if m.get("parent") and m["id"] not in ours)
            self._publish()
            self._drop_retired()
            return lost

    async def _load(self, adapter: _Adapter, wait: bool, spare: int) -> None:
        """Load ``adapter``, counting the outcome."""
        outcome = "failure"
        try:
            await self._load_once(adapter, wait, spare)
            outcome = "success"
        except CapacityExhausted:
            outcome = "no_capacity"  # not the adapter's fault: every slot was busy
            raise
        finally:
            if self.metrics is not None:
                self.metrics.adapter_loads.labels(adapter.name, outcome, self.replica).inc()
            self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            for adapter in self._adapters.values():
                self.metrics.adapter_resident.labels(adapter.name, self.replica).set(1 if adapter.resident else 0)

    async def _load_once(self, adapter: _Adapter, wait: bool, spare: int) -> None:
        settings = self.settings
        spec = adapter.spec  # the files checked are the files loaded, even if a reload moves them meanwhile
        if spec.path is None:
            raise InvalidAdapter(unresolved_reason(adapter.name, spec), param="model")
        # Checked before anything is sent: a bad adapter never reaches vLLM.
        await asyncio.to_thread(
            validate_adapter, adapter.name, Path(spec.path), max_rank=settings.max_rank, base=settings.base
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (settings.capacity_wait_s if wait else 0.0)
        while True:
            releases = self._releases
            async with self._ops:
                if adapter.resident and not adapter.stale:
                    return
                if adapter.resident or await self._make_room(adapter, spare):
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
                    f"all {self.settings.max_resident} adapter slots are busy serving requests (or pinned); "
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
        payload: dict[str, Any] = {"lora_name": adapter.lora, "lora_path": served_path}
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
            adapter.failure, adapter.failures = None, 0
            log.info("adapter %s loaded on %s", adapter.lora, self.upstream.url)
            return
        failure: TurnoutError
        if status in (400, 404, 422):
            failure = InvalidAdapter(
                f"vLLM refused to load adapter {adapter.name!r} from {served_path}: {error_message(body)[0]}",
                param="model",
            )
        else:
            failure = UpstreamError(
                f"vLLM at {self.upstream.url} failed to load adapter {adapter.name!r} ({status}): "
                f"{error_message(body)[0]}"
            )
        self._mark_failed(adapter, failure)
        raise failure

    def _mark_failed(self, adapter: _Adapter, failure: TurnoutError) -> None:
        settings = self.settings
        backoff = min(settings.retry_max_s, settings.retry_after_s * 2**adapter.failures)
        adapter.failure, adapter.failures = failure, adapter.failures + 1
        adapter.retry_at = asyncio.get_running_loop().time() + backoff
        log.warning("%s; not tried again on this replica for %.0f s", failure.message, backoff)

    async def _make_room(self, incoming: _Adapter, spare: int) -> bool:
        """Unload idle adapters the fleet needs less than ``spare`` until one slot is free (adapters a reload
        removed first, then those it does not need, each least recently used first); ``False`` when none is
        left. Without ``evict`` nothing is unloaded: vLLM makes room, for requests and pinned adapters, while
        loads that only may have a slot (``spare`` FREE) take a free one or none."""
        if not self.settings.evict:
            return spare > FREE or self.occupied() - (incoming.loading is not None) < self.settings.max_resident
        while sum(a.resident for a in self._adapters.values()) >= self.settings.max_resident:
            idle = [
                a
                for a in self._adapters.values()
                if a.resident and a.in_flight == 0 and a is not incoming and self._need(a) < spare
            ]
            if not idle:
                return False
            await self._unload(min(idle, key=lambda a: (self._need(a), a.declared, a.last_used)))
        return True

    async def _unload(self, adapter: _Adapter) -> None:
        status, body = await self.upstream.request(
            "POST", "/v1/unload_lora_adapter", {"lora_name": adapter.lora}, timeout_s=self.settings.load_timeout_s
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
        log.info("adapter %s unloaded from %s", adapter.lora, self.upstream.url)


def _loaded(adapter: _Adapter, _task: asyncio.Task[None]) -> None:
    adapter.loading = None
