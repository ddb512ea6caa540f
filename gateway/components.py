"""Everything the gateway builds at start-up, built in one place, reloaded in one place, closed in reverse.

The FastAPI lifespan calls :func:`build_components`; routers reach the result through the typed
accessors in :mod:`gateway.api.deps`. Nothing here runs at import time.

Reloading (SIGHUP or ``POST /admin/reload``) re-reads the file, validates it, builds the new routing
table (embedding new intent examples) and only then swaps it in, each part through its own method
(``service.swap``, ``accounting.use_prices``, ...): an invalid file changes nothing and the old policies
keep serving. Sections that shape connections and processes (``server``, ``vllm``, ``base_model``,
``embeddings``, ``openai``, ``rag.store``, and turning retrieval on or off) need a restart; a reload reports
which of them changed. Adapters served from the adapter store also move without a reload: the store's names
are read every ``adapter_store.watch_interval_s`` (:func:`watch_store`).

May import: every capability and ``gateway.dispatch``; never ``gateway.api`` (which imports this).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.accounting.ledger import Accounting
from gateway.accounting.prices import PriceBook
from gateway.accounting.quotas import Quotas
from gateway.accounting.usage import TokenCounter
from gateway.adapters.manager import ManagerSettings
from gateway.adapters.served import ServedAdapters
from gateway.adapters.validation import BaseModelFacts
from gateway.auth import Authenticator
from gateway.config import ConfigError, TurnoutConfig, load_config
from gateway.dispatch.admission import Admission, AdmissionLimits
from gateway.dispatch.backend import Backend, VllmBackend
from gateway.dispatch.embeddings import EmbeddingService
from gateway.dispatch.openai_backend import OpenAIBackend
from gateway.dispatch.service import CompletionService, RequestLimits
from gateway.dispatch.shadows import ShadowRunner
from gateway.embeddings import Embedder, EmbedderError
from gateway.errors import ConfigRejected
from gateway.fleet.discovery import Resolver
from gateway.fleet.fleet import Fleet
from gateway.fleet.placement import Placement
from gateway.metrics import Metrics
from gateway.protocol.caps import InputCaps
from gateway.routing_state import (
    build_routing_table,
    openai_models,
    policies_use_intents,
    policies_use_openai,
    policies_use_shadows,
)
from gateway.upstream.breaker import BreakerSettings
from routing import RoutingTable, TargetKind

if TYPE_CHECKING:  # the vector store client is imported only when retrieval is configured
    from gateway.dispatch.rag_backend import RagBackend
    from gateway.rag.ingest import Ingestor
    from gateway.rag.store import VectorStore

log = logging.getLogger("turnout")

# vLLM's uvicorn closes idle keep-alive connections after 5 s; closing ours sooner avoids reusing one
# the server is about to drop.
_KEEPALIVE_S = 4.0
_RESTART_SECTIONS = ("server", "vllm", "embeddings", "base_model", "openai")


class StartupError(Exception):
    """A component cannot start (the vector store is locked, the embedding model is missing)."""


def needs_embedder(config: TurnoutConfig) -> bool:
    """Intents, retrieval, or ``embeddings.serve: true`` (the model loaded at start-up for the endpoint alone:
    never on a first request, which would wait seconds for it and grow the process by torch mid-service)."""
    return (
        policies_use_intents(config)
        or bool(config.rag.collections)
        or config.embeddings.serve is True
        or policies_use_shadows(config)  # agreement between shadow answers is measured with it
    )


def base_model_facts(config: TurnoutConfig) -> BaseModelFacts:
    names = {config.vllm.model, config.base_model_name, *config.base_model.aliases}
    return BaseModelFacts.from_config(names, config.base_model.path)


class Components:
    def __init__(
        self,
        config: TurnoutConfig,
        config_path: Path | None,
        fleet: Fleet,
        service: CompletionService,
        store: VectorStore | None,
        ingestor: Ingestor | None,
        metrics: Metrics,
        rag_backend: RagBackend | None = None,
        served: ServedAdapters | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.fleet = fleet
        self.served = served or ServedAdapters(config.adapters, config.adapter_store)
        self.service = service
        self.store = store
        self.ingestor = ingestor
        self.metrics = metrics
        self._rag_backend = rag_backend
        self.embeddings = EmbeddingService(config.embeddings, service.accounting)
        self.embeddings.use(service.embedder, config.serves_embeddings)
        self.auth = Authenticator(config.auth)
        self.admission = Admission(admission_limits(config))
        self.quotas = Quotas(config.limits, metrics)
        self.shadows = ShadowRunner(config.shadows, service.backends, service.accounting, self.quotas)
        self.shadows.embedder = service.embedder
        self._reloading = asyncio.Lock()  # one reload at a time: the last file read is the one applied
        self.started_at = int(time.time())
        self.reloads = 0

    def circuits(self) -> dict[str, Any]:
        """Every upstream's circuit: each OpenAI model called so far, and vLLM's (open while every replica is
        ejected)."""
        backend = self.service.backends.get(TargetKind.OPENAI)
        openai = [b.describe() for b in backend.breakers.values()] if isinstance(backend, OpenAIBackend) else []
        return {"openai": openai, "vllm": self.fleet.circuit()}

    async def aclose(self) -> None:
        self.service.deadlines.close()
        await self.shadows.aclose()
        await self.quotas.aclose()
        if self.store is not None:
            await self.store.close()
        if self.service.embedder is not None:
            self.service.embedder.close()

    @property
    def table(self) -> RoutingTable:
        return self.service.table

    @property
    def accounting(self) -> Accounting:
        return self.service.accounting

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; on any problem raise :class:`ConfigRejected` and change nothing."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> dict[str, Any]:
        if self.config_path is None:
            raise ConfigRejected("this gateway was not started from a configuration file; nothing to reload")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            raise ConfigRejected("configuration not reloaded: " + " | ".join(exc.problems)) from exc
        old = self.config
        restart = [s for s in _RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
        if new.rag.store != old.rag.store:
            restart.append("rag.store")
        if bool(new.rag.collections) != bool(old.rag.collections):
            restart.append("rag.collections")  # turning retrieval on or off opens or closes the store
        # What needs a restart keeps its running value, so the gateway stays coherent.
        kept = {s: getattr(old, s) for s in _RESTART_SECTIONS}
        if "rag.collections" in restart:
            kept["rag"] = old.rag
        else:
            kept["rag"] = new.rag.model_copy(update={"store": old.rag.store})
        new = new.model_copy(update=kept)
        embedder = self.service.embedder
        try:
            embedder = await _embedder_for(new, embedder, self.metrics)
            table = await build_routing_table(new, embedder)
            prices = price_book(new)
        except (ValueError, EmbedderError) as exc:
            if embedder is not None and embedder is not self.service.embedder:
                embedder.close()  # loaded for this reload only
            raise ConfigRejected(f"configuration not reloaded: {self.config_path}: {exc}") from exc
        self.fleet.update(self.served.use(new.adapters, new.adapter_store))
        self.metrics.declare(new.adapters, new.rag.collections)
        if self._rag_backend is not None:
            self._rag_backend.use_collections(new.rag.collections)
        self.auth = Authenticator(new.auth)
        self.service.accounting.use_prices(prices)
        self.service.swap(table, embedder, request_limits(new))
        self.admission.use(admission_limits(new))
        self.quotas.use(new.limits)
        self.shadows.embedder = embedder
        self.embeddings.use(embedder, new.serves_embeddings)
        self.config = new
        self.reloads += 1
        if restart:
            log.warning("reloaded %s; changes to %s need a restart", self.config_path, ", ".join(restart))
        else:
            log.info("reloaded %s", self.config_path)
        return {
            "status": "reloaded",
            "models": table.names(),
            "policies": list(new.policies),
            "needs_restart": restart,
        }


async def watch_store(served: ServedAdapters, fleet: Fleet) -> None:
    """Read the adapter store's names every ``watch_interval_s``; a name moved to another version is handed to
    the fleet (new requests go to the new version, those in flight finish on the old one)."""
    while True:
        await asyncio.sleep(served.store.watch_interval_s)
        if not served.watched():
            continue
        try:
            moved = await asyncio.to_thread(served.refresh)
        except Exception:  # one failed reading is logged; the next one runs (the store may be remounting)
            log.exception("reading the adapter store's names failed")
            continue
        if moved is not None:
            fleet.update(moved)


def price_book(config: TurnoutConfig) -> PriceBook:
    """The prices for ``config`` (:class:`gateway.config.prices.PriceError` if a model has none)."""
    return PriceBook(config.costs, openai_models(config))


async def _embedder_for(config: TurnoutConfig, current: Embedder | None, metrics: Metrics) -> Embedder | None:
    """The loaded embedder when intents or retrieval need one (the current one if there is one)."""
    if current is not None or not needs_embedder(config):
        return current
    embedder = Embedder(
        config.embeddings, lambda kind, seconds: metrics.embedding_seconds.labels(kind).observe(seconds)
    )
    await embedder.start()
    return embedder


def request_limits(config: TurnoutConfig) -> RequestLimits:
    limits = config.limits
    caps = InputCaps(limits.max_messages, limits.max_message_chars, limits.max_input_chars)
    return RequestLimits(caps, limits.first_byte_timeout_s)


def admission_limits(config: TurnoutConfig) -> AdmissionLimits:
    limits = config.limits
    return AdmissionLimits(limits.max_in_work, limits.max_waiting, limits.max_wait_s)


async def build_components(
    config: TurnoutConfig,
    config_path: Path | None,
    stack: AsyncExitStack,
    *,
    resolver: Resolver | None = None,
    placement: Placement | None = None,
) -> Components:
    """Everything the app serves with. ``resolver`` and ``placement`` replace the system's DNS resolver and the
    residency-first choice of replicas (tests point discovery at names of their own; the fleet benchmark
    measures round-robin choice against the real rule)."""
    vllm = config.vllm
    metrics = Metrics()
    metrics.declare(config.adapters, config.rag.collections)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S, ttl_dns_cache=300)
    session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=connector, auto_decompress=False, raise_for_status=False)
    )
    settings = ManagerSettings(
        max_rank=vllm.max_lora_rank,
        max_resident=vllm.max_resident,
        load_timeout_s=vllm.adapter_load_timeout_s,
        capacity_wait_s=vllm.capacity_wait_s,
        base=base_model_facts(config),
        evict=vllm.eviction == "gateway",
    )
    served = ServedAdapters(config.adapters, config.adapter_store)
    fleet = Fleet(
        vllm,
        served.current,
        settings,
        session,
        metrics,
        resolver=resolver,
        placement=placement,
        trial_every_s=config.breaker.open_s,
        error_rate=config.breaker.error_rate,
        window=config.breaker.window,
    )
    stack.push_async_callback(fleet.aclose)  # its background tasks stop before the session closes
    await fleet.start()
    watcher = asyncio.create_task(watch_store(served, fleet), name="adapter-store-watch")
    stack.callback(watcher.cancel)
    try:
        embedder = await _embedder_for(config, None, metrics)
    except EmbedderError as exc:
        raise StartupError(str(exc)) from exc
    try:
        prices = price_book(config)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    if not prices.self_hosted_priced:
        log.warning("costs.vllm.gpu_hour_usd is 0: requests served by vLLM are costed at $0")
    table = await build_routing_table(config, embedder)
    vllm_backend = VllmBackend(fleet)
    circuit = config.breaker
    breakers = BreakerSettings(circuit.failures, circuit.error_rate, circuit.window, circuit.open_s)
    openai_backend = OpenAIBackend(config.openai, breakers, metrics.circuit_changed)
    if policies_use_openai(config):
        # litellm takes seconds to import: at start-up, off the event loop, not on the first request
        await asyncio.to_thread(openai_backend.prepare)
    backends: dict[TargetKind, Backend] = {
        TargetKind.BASE: vllm_backend,
        TargetKind.ADAPTER: vllm_backend,
        TargetKind.OPENAI: openai_backend,
    }
    store = ingestor = rag_backend = None
    if config.rag.collections:
        from gateway.dispatch.rag_backend import RagBackend
        from gateway.rag.ingest import Ingestor
        from gateway.rag.store import StoreError, VectorStore

        assert embedder is not None
        try:
            store = VectorStore.open(config.rag.store, embedder.dimension)
        except StoreError as exc:
            raise StartupError(str(exc)) from exc
        ingestor = Ingestor(store, embedder, config.rag.chunking)
        rag_backend = RagBackend(store, embedder, config.rag.collections, vllm_backend, metrics)
        backends[TargetKind.RAG] = rag_backend
    tokenizer = config.base_model.path / "tokenizer.json" if config.base_model.path is not None else None
    counter = await asyncio.to_thread(
        TokenCounter, tokenizer, openai_backend.count_tokens if policies_use_openai(config) else None
    )
    service = CompletionService(table, backends, embedder, Accounting(metrics, prices, counter), request_limits(config))
    components = Components(config, config_path, fleet, service, store, ingestor, metrics, rag_backend, served)
    stack.push_async_callback(components.aclose)
    return components
