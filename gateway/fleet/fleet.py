"""The replica set and its background work: discovery, health probes, and reconciling declared adapters.

Three background tasks, started by :meth:`Fleet.start` and cancelled by :meth:`Fleet.aclose` (both from the
app's lifespan):

* **probes**: every ``health.interval_s`` each replica's ``/health`` is asked (``health.timeout_s``). A
  failure counts towards ejection like a request the replica could not take; a success clears the count
  and returns an ejected replica. A replica that comes back is re-read (``/v1/models``) and brought to its
  declared adapters at once: a restarted vLLM has forgotten what was loaded at run time. After a probe,
  ``/v1/models`` is also read when there is a declared state to keep (pinned or ``min_replicas`` adapters)
  or other gateways share the replicas (``eviction: vllm``): an adapter the gateway loaded there and no
  longer listed means a restart (or vLLM's LRU), and is repaired at once, without waiting for a 404;
* **discovery** (``vllm.discovery``): the name is resolved every ``interval_s``; new addresses join (read,
  then given their declared adapters), addresses that left are drained: chosen for nothing new, dropped
  when their last request ends. A failed resolution keeps the replicas last known, and says so in the
  log and in ``turnout_discovery_failures_total``;
* **reconciliation**: one pass at a time, asked for by the events above (and after every probe round, which
  also retries loads whose back-off has passed): pinned adapters are loaded on every healthy replica that
  lacks them, then ``min_replicas`` adapters on the least occupied replicas until that many hold them.

A request's replica comes from :meth:`Fleet.pick` (the rule is :mod:`gateway.fleet.placement`'s). With one
configured replica there is nothing to choose, and the hot path returns it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import aiohttp

from gateway.adapters.manager import FREE, PINNED, WANTED, AdapterManager, ManagerSettings
from gateway.config import AdapterConfig
from gateway.config.model import VllmConfig
from gateway.errors import TurnoutError, UpstreamTimeout, UpstreamUnavailable
from gateway.fleet.discovery import Resolver, SystemResolver, address_url
from gateway.fleet.placement import Placement, ResidencyFirst, rank
from gateway.fleet.replica import Replica, replica_name
from gateway.metrics import Metrics
from gateway.upstream.client import Upstream, UpstreamSettings

log = logging.getLogger("turnout.fleet")


def replica_at_fault(exc: TurnoutError) -> bool:
    """The replica could not be reached, or went silent: counted towards its ejection. An answer, even a
    503 of an overloaded server, shows it alive; those are raised from no library exception."""
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout) and exc.__cause__ is not None


def worth_another_replica(exc: TurnoutError) -> bool:
    """Before the first byte, another replica may take the request: this one is down, silent or overloaded."""
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout)


class Fleet:
    """The vLLM replicas behind this gateway, each with its adapters, health and load."""

    def __init__(
        self,
        config: VllmConfig,
        adapters: Mapping[str, AdapterConfig],
        settings: ManagerSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        resolver: Resolver | None = None,
        placement: Placement | None = None,
        trial_every_s: float = 10.0,
        error_rate: float = 0.5,
        window: int = 20,
    ) -> None:
        self.config = config
        self._trial_every_s = trial_every_s
        self._error_rate, self._window = error_rate, window  # a replica failing this often is ejected too
        self._next_trial = 0.0  # while every replica is ejected: when one request may try again
        self._circuit = "closed"
        self.metrics = metrics
        self._adapters = dict(adapters)
        self._settings = settings
        self._session = session
        self._resolver = resolver or SystemResolver()
        self._placement = placement or ResidencyFirst()
        self._replicas: list[Replica] = []
        self._single: Replica | None = None  # the one configured replica: nothing to choose
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconcile_wanted = asyncio.Event()
        self._spreading: set[tuple[str, str]] = set()  # (adapter, replica) loads started for a hot adapter
        self._discovered_once = False
        metrics.watch_replicas(self.figures)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find the replicas and read what each holds; then start probing, discovering and reconciling.
        Nothing here waits for vLLM: a replica that is down at start is simply not healthy yet."""
        discovery = self.config.discovery
        if discovery is None:
            for url in self.config.static_urls:
                self._add(url)
            if len(self._replicas) == 1:
                self._single = self._replicas[0]
        else:
            with _surviving(f"discovering the replicas of {discovery.dns}"):
                await self._discover()
        # Bounded as the probes are: a vLLM that accepts connections and never answers must not hold the gateway's
        # start-up for the read timeout meant for completions (it is then simply not healthy yet).
        timeout = self.config.health.timeout_s
        results = await asyncio.gather(
            *(r.adapters.sync(timeout_s=timeout) for r in self._replicas), return_exceptions=True
        )
        for replica, result in zip(self._replicas, results, strict=True):
            if isinstance(result, TurnoutError):
                # Not fatal: vLLM may start after the gateway; residency is learnt on first use then.
                log.warning("could not read the adapters of vLLM at %s at start-up: %s", replica.url, result.message)
            elif isinstance(result, BaseException):
                raise result
        self._background(self._probing(), "fleet-probes")
        self._background(self._reconciling(), "fleet-reconcile")
        if discovery is not None:
            self._background(self._discovering(), "fleet-discovery")
        self._reconcile_soon()

    async def aclose(self) -> None:
        tasks = list(self._tasks)  # each task leaves the set as it ends
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def update(self, adapters: Mapping[str, AdapterConfig]) -> None:
        """A reload's adapters: every replica learns them, and the declared state is reconciled again."""
        self._adapters = dict(adapters)
        for replica in self._replicas:
            moved = replica.adapters.update(adapters)
            self.metrics.declare_replica(replica.name, adapters)
            for name in moved:  # a new version where the old one is loaded: load it there now, in its place
                self._spread(name, replica, evict=True)
        self._reconcile_soon()

    # -- the request path -------------------------------------------------------------------------

    def pick(self, adapter: str | None, tried: Iterable[Replica] = ()) -> Replica | None:
        """The replica for a request (``adapter`` None: the base model), skipping those ``tried`` already.
        None when no replica is left to try; when every one is in a back-off for the adapter, one of them
        (its manager then raises the failure it recorded)."""
        single = self._single
        if single is not None:
            return None if tried or not (single.available or self._trial_due()) else single
        skipped = set(tried)
        candidates = [r for r in self._replicas if r.available and r not in skipped]
        if not candidates:
            # Nothing healthy: the circuit is open. One new request in every trial_every_s tries them all (a
            # request is a probe too); other new ones fail at once, so their fallbacks answer without waiting.
            # A request already under way (``tried``) goes on trying the rest, as it would have.
            if not skipped and not self._trial_due():
                return None
            candidates = [r for r in self._replicas if not r.draining and r not in skipped]
            if not candidates:
                return None
        spec = self._adapters.get(adapter) if adapter is not None else None
        bound = None if spec is None else 0 if spec.pinned else spec.max_replicas
        choice = self._placement.choose(candidates, adapter, bound)
        if choice is None:
            return candidates[0]
        if choice.spread_to is not None and adapter is not None:
            self._spread(adapter, choice.spread_to)
        return choice.replica

    def none_left(self, adapter: str | None) -> TurnoutError:
        """Why no replica can be tried (discovery found none, every one was tried, or every one is ejected
        and this request is not the one that tries again)."""
        where = self.config.describe()
        if not self._replicas:
            return UpstreamUnavailable(f"no vLLM replica is known: none found at {where}")
        if not any(r.available for r in self._replicas):
            wait = max(0.0, self._next_trial - time.monotonic())
            return UpstreamUnavailable(
                f"every vLLM replica is ejected after failures ({where}); one request tries again in "
                f"{wait:.1f} s (breaker.open_s)",
                code="circuit_open",
            )
        return UpstreamUnavailable(f"no vLLM replica could take the request ({where})")

    def circuit(self) -> dict[str, object]:
        """vLLM's circuit for ``/admin/circuits``."""
        open_ = self._replicas and not any(r.available for r in self._replicas)
        return {
            "upstream": "vllm",
            "state": "open" if open_ else "closed",
            "replicas_in_rotation": sum(r.available for r in self._replicas),
            "replicas": len(self._replicas),
            "next_trial_in_s": round(max(0.0, self._next_trial - time.monotonic()), 3) if open_ else 0.0,
        }

    def _trial_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_trial:
            return False
        self._next_trial = now + self._trial_every_s
        return True

    def _circuit_check(self) -> None:
        """Tell the metrics when no replica is left in rotation (the circuit opens) and when one returns."""
        state = "closed" if any(r.available for r in self._replicas) else "open"
        if state != self._circuit:
            self._circuit = state
            self.metrics.circuit_changed("vllm", state)

    def answered(self, replica: Replica) -> None:
        """The replica took a request: its failures in a row are over (and, if it was ejected, it is back)."""
        if replica.failures:
            replica.failures = 0
        replica.outcomes.append(False)
        if not replica.healthy:
            self._returned(replica, "it answered a request")

    def failed(self, replica: Replica, exc: TurnoutError, adapter: str | None) -> bool:
        """A request failed on ``replica`` before its first byte: count it if the replica is at fault, and say
        whether another replica may take the request (this one is down, silent or overloaded, or could not
        load the adapter: a failure marked for this replica alone)."""
        if replica_at_fault(exc):
            replica.outcomes.append(True)
            self._count_failure(replica, exc.message)
        if worth_another_replica(exc):
            return True
        return adapter is not None and replica.adapters.blocked(adapter) is not None

    def forgotten(self, replica: Replica, names: set[str]) -> None:
        """``replica`` turned out not to hold adapters the gateway had loaded there (a 404): repair it now."""
        if names:
            log.warning("vLLM at %s no longer holds %s: reloading its declared adapters", replica.url, sorted(names))
            self._reconcile_soon()

    # -- what it looks like -----------------------------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    def figures(self) -> list[tuple[str, int, bool]]:
        """Each replica's name, requests in flight and health, for the metrics."""
        return [(r.name, r.in_flight, r.available) for r in self._replicas]

    def resident_on(self, name: str) -> list[str]:
        """The replicas (names) where ``name`` is loaded."""
        return [r.name for r in self._replicas if r.available and r.adapters.is_resident(name)]

    def snapshot(self) -> dict[str, Any]:
        """``/admin/adapters``: per replica its health, load and adapters; per adapter, the whole fleet."""
        replicas = [r.describe() for r in self._replicas]
        adapters = []
        for name, spec in self._adapters.items():
            rows = [row for r in self._replicas for row in r.adapters.snapshot() if row["name"] == name]
            adapters.append(
                {
                    "name": name,
                    "path": None if spec.path is None else str(spec.path),
                    "store": spec.store,
                    "version": spec.version,
                    "pinned": spec.pinned,
                    "min_replicas": spec.min_replicas,
                    "max_replicas": spec.max_replicas,
                    "resident": any(row["resident"] for row in rows),
                    "loading": any(row["loading"] for row in rows),
                    "in_flight": sum(row["in_flight"] for row in rows),
                    "loads": sum(row["loads"] for row in rows),
                    "replicas": self.resident_on(name),
                }
            )
        return {
            "eviction": self.config.eviction,
            "max_resident": self.config.max_resident,
            "replica_source": self.config.describe(),
            "replicas": replicas,
            "adapters": adapters,
        }

    async def ready(self) -> dict[str, str]:
        """Ask every replica in the set for ``/health`` now: ``ok``, or why not."""

        async def ask(replica: Replica) -> str:
            try:
                status, _ = await replica.upstream.request("GET", "/health", timeout_s=self.config.health.timeout_s)
            except TurnoutError as exc:
                return exc.message
            return "ok" if status == 200 else f"/health answered {status}"

        live = [r for r in self._replicas if not r.draining]
        answers = await asyncio.gather(*(ask(r) for r in live))
        return {r.name: answer for r, answer in zip(live, answers, strict=True)}

    # -- replicas joining and leaving -------------------------------------------------------------

    def _add(self, url: str) -> Replica:
        name = replica_name(url)
        vllm = self.config
        upstream = Upstream(
            UpstreamSettings(
                url=url,
                api_key=vllm.api_key.get_secret_value() if vllm.api_key else None,
                connect_timeout_s=vllm.connect_timeout_s,
                read_timeout_s=vllm.read_timeout_s,
            ),
            self._session,
            broken=lambda reason: self._count_failure(replica, reason),  # a stream broke off mid-way
        )
        manager = AdapterManager(
            upstream, self._adapters, self._settings, self.metrics, replica=name, keep=self._keeper(name)
        )
        replica = Replica(url, name, upstream, manager, drained=self._drop, outcomes=deque(maxlen=self._window))
        self.metrics.declare_replica(name, self._adapters)
        self._replicas.append(replica)
        return replica

    def _drop(self, replica: Replica) -> None:
        if replica in self._replicas:
            self._replicas.remove(replica)
            replica.adapters.forget_metrics()
            log.info("replica %s left the fleet (drained)", replica.name)

    def _keeper(self, name: str) -> Callable[[str], int]:
        """How much the replica ``name`` needs each adapter: pinned ones always, and one it holds for its
        ``min_replicas`` while no more than that many healthy replicas hold it (the manager spares these)."""

        def keep(adapter: str) -> int:
            spec = self._adapters.get(adapter)
            if spec is None:
                return FREE
            if spec.pinned:
                return PINNED
            if spec.min_replicas:
                holders = sum(1 for r in self._replicas if r.available and r.adapters.is_resident(adapter))
                return WANTED if holders <= spec.min_replicas else FREE
            return FREE

        return keep

    async def _discover(self) -> None:
        discovery = self.config.discovery
        assert discovery is not None
        try:
            async with asyncio.timeout(discovery.interval_s):
                addresses = await self._resolver.resolve(discovery.dns, discovery.port)
            if not addresses:
                raise OSError("no address")
        except (OSError, TimeoutError) as exc:
            self.metrics.discovery_failures.inc()
            log.warning(
                "could not resolve %s (%s): keeping the %d replica(s) last known",
                discovery.dns,
                exc or "timed out",
                len([r for r in self._replicas if not r.draining]),
            )
            return
        urls = {address_url(discovery.scheme, address, discovery.port) for address in addresses}
        for replica in list(self._replicas):
            if replica.url in urls and replica.draining:
                replica.draining = False
                log.info("replica %s is back in %s", replica.name, discovery.dns)
            elif replica.url not in urls and not replica.draining:
                replica.draining = True
                log.info("replica %s left %s: draining %d request(s)", replica.name, discovery.dns, replica.in_flight)
                if replica.in_flight == 0:
                    self._drop(replica)
        known = {r.url for r in self._replicas}
        for url in sorted(urls - known):
            replica = self._add(url)
            if self._discovered_once:
                log.info("replica %s joined from %s", replica.name, discovery.dns)
                self._background(self._joined(replica), f"fleet-join-{replica.name}")
        self._discovered_once = True

    async def _joined(self, replica: Replica) -> None:
        with contextlib.suppress(TurnoutError):
            await replica.adapters.sync(timeout_s=self.config.health.timeout_s)
        self._reconcile_soon()

    # -- health -----------------------------------------------------------------------------------

    def _count_failure(self, replica: Replica, reason: str) -> None:
        """A probe or a request failed at the replica's fault: eject it after ``health.eject_after`` in a row,
        or when ``breaker.error_rate`` of its last ``breaker.window`` requests (half a window at least) failed."""
        replica.failures += 1
        replica.last_error = reason
        if not replica.healthy:
            return
        recent = replica.outcomes
        failing = len(recent) >= max(1, self._window // 2) and sum(recent) >= self._error_rate * len(recent)
        if replica.failures >= self.config.health.eject_after or failing:
            why = (
                f"{replica.failures} consecutive failures"
                if replica.failures >= self.config.health.eject_after
                else f"{sum(recent)} of its last {len(recent)} requests failed"
            )
            replica.healthy = False
            replica.ejections += 1
            self.metrics.replica_ejections.labels(replica.name).inc()
            log.warning("replica %s ejected after %s (last: %s)", replica.name, why, reason)
            self._circuit_check()

    def _returned(self, replica: Replica, why: str) -> None:
        replica.healthy = True
        replica.failures = 0
        replica.outcomes.clear()
        self._circuit_check()
        log.warning("replica %s is back (%s): re-reading its adapters", replica.name, why)
        self._background(self._resync(replica), f"fleet-resync-{replica.name}")

    async def _resync(self, replica: Replica) -> None:
        """A replica back from an ejection may have restarted: read what it holds, then repair it."""
        try:
            await replica.adapters.sync(timeout_s=self.config.health.timeout_s)
        except TurnoutError as exc:
            log.warning("could not read the adapters of %s: %s", replica.name, exc.message)
        self._reconcile_soon()

    async def _probing(self) -> None:
        interval = self.config.health.interval_s
        while True:
            with _surviving("probing the replicas"):
                await asyncio.gather(*(self._probe(r) for r in list(self._replicas) if not r.draining))
                if self._declares_state():
                    self._reconcile_soon()  # also retries loads whose back-off has passed
            await asyncio.sleep(interval)

    async def _probe(self, replica: Replica) -> None:
        timeout = self.config.health.timeout_s
        try:
            status, _ = await replica.upstream.request("GET", "/health", timeout_s=timeout)
            reason = "" if status == 200 else f"/health answered {status}"
        except TurnoutError as exc:
            reason = exc.message
        if reason:
            self._count_failure(replica, reason)
            return
        replica.failures = 0
        if not replica.healthy:
            self._returned(replica, "its /health answers again")
            return
        # A load under way holds the replica's operations: reading the listing would wait for it and hold up
        # this probe round, so it waits for the next round instead.
        if (self._declares_state() or self.config.eviction == "vllm") and not replica.adapters.busy():
            try:
                lost = await replica.adapters.sync(timeout_s=timeout)
            except TurnoutError as exc:
                log.debug("could not read the adapters of %s: %s", replica.name, exc.message)
                return
            if lost:
                log.warning(
                    "vLLM at %s no longer lists %s (restarted?): bringing it back to its declared adapters",
                    replica.url,
                    sorted(lost),
                )
                self._reconcile_soon()

    async def _discovering(self) -> None:
        discovery = self.config.discovery
        assert discovery is not None
        while True:
            await asyncio.sleep(discovery.interval_s)
            with _surviving(f"discovering the replicas of {discovery.dns}"):
                await self._discover()

    # -- declared state ---------------------------------------------------------------------------

    def _declares_state(self) -> bool:
        return any(spec.pinned or spec.min_replicas for spec in self._adapters.values())

    def _reconcile_soon(self) -> None:
        self._reconcile_wanted.set()

    async def _reconciling(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            with _surviving("reconciling declared adapters"):
                await self._reconcile()

    def _plan(self) -> dict[Replica, list[tuple[str, bool]]]:
        """What to load where, and whether it may evict: pinned adapters on every healthy replica (evicting
        idle adapters that are not pinned), then ``min_replicas`` ones on the least occupied replicas, into a
        free slot only: a request may have taken the last one, and a warm copy never pushes it out again."""
        live = [r for r in self._replicas if r.available]
        plan: dict[Replica, list[tuple[str, bool]]] = {}
        for name, spec in self._adapters.items():
            if spec.pinned:
                for replica in live:
                    if not replica.adapters.holds(name) and replica.adapters.blocked(name) is None:
                        plan.setdefault(replica, []).append((name, True))
        for name, spec in self._adapters.items():
            if spec.pinned or not spec.min_replicas:
                continue
            holders = [r for r in live if r.adapters.holds(name)]
            missing = min(spec.min_replicas, len(live)) - len(holders)
            if missing <= 0:
                continue
            others = [
                r for r in live if r not in holders and r.adapters.blocked(name) is None and r.adapters.has_free_slot()
            ]
            # fewest adapters first, then least loaded, then the adapter's own order (the same on every gateway)
            others.sort(key=partial(_fill_order, name))
            for replica in others[:missing]:
                plan.setdefault(replica, []).append((name, False))
        return plan

    async def _reconcile(self) -> None:
        plan = self._plan()
        if not plan:
            return

        async def load(replica: Replica, names: list[tuple[str, bool]]) -> None:
            for name, evict in names:  # one at a time: the replica's loads are serialised anyway
                if await replica.adapters.preload(name, evict=evict):
                    log.info("adapter %s loaded on %s (declared)", name, replica.name)

        await asyncio.gather(*(load(replica, names) for replica, names in plan.items()))

    def _spread(self, adapter: str, replica: Replica, *, evict: bool = False) -> None:
        """Load ``adapter`` on ``replica`` in the background: it is busy elsewhere, or (``evict``) its new version
        replaces the one loaded there."""
        key = (adapter, replica.name)
        if key in self._spreading:
            return
        self._spreading.add(key)

        async def load() -> None:
            try:
                if await replica.adapters.preload(adapter, evict=evict):
                    why = "its new version" if evict else "it is busy: also"
                    log.info("adapter %s: %s loaded on %s", adapter, why, replica.name)
            finally:
                self._spreading.discard(key)

        self._background(load(), f"fleet-spread-{adapter}")

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _fill_order(adapter: str, replica: Replica) -> tuple[int, int, int]:
    return replica.adapters.occupied(), replica.in_flight, -rank(adapter, replica.name)


@contextlib.contextmanager
def _surviving(doing: str) -> Iterator[None]:
    """One round of background work that fails is logged, and the next round runs: a failure never ends it."""
    try:
        yield
    except TurnoutError as exc:
        log.warning("%s failed: %s", doing, exc.message)
    except Exception:
        log.exception("%s failed", doing)
