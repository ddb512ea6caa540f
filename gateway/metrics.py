"""Prometheus metrics, in a registry of the app's own (built in the lifespan, never module-global).

Label values are bounded by the configuration (policy, target, adapter and collection names, error
codes, HTTP statuses), never by callers: no user ids, keys or prompt text become labels. A request for
a model the gateway does not serve is counted under ``policy="none"``, not under the name it asked for.

The hot path looks its labelled children up once per route (:meth:`Metrics.route`) and keeps them, so
a request costs a few dictionary hits and observations, not a label resolution per metric.

One process per container: every figure here (and the adapter residency it reports) belongs to the
process that serves it; scale by running more replicas, each scraped on its own.

vLLM replicas are a label too (``replica``: the host:port of a configured or discovered replica), bounded
because a replica that leaves the set takes its series with it. Requests in flight and health per replica
are read from the fleet when scraped (:meth:`Metrics.watch_replicas`), so the hot path pays nothing for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

NO_POLICY = "none"  # the policy label of requests that never reached a configured model
NO_ROUTE = "none"  # route kind and target of requests refused before routing

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LOAD_OUTCOMES = ("success", "failure", "no_capacity")

# What the fleet says of each replica when scraped: its name, requests in flight, healthy or not.
ReplicaFigures = Callable[[], Iterable[tuple[str, int, bool]]]


_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}  # as gateway.upstream.breaker names them


class _ReplicaGauges(Collector):
    """``turnout_replica_in_flight_requests`` and ``turnout_replica_healthy``, read from the fleet when scraped."""

    def __init__(self) -> None:
        self.source: ReplicaFigures | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "turnout_replica_in_flight_requests",
                "Requests this gateway has open on a vLLM replica now (streams until their last byte).",
                labels=["replica"],
            ),
            GaugeMetricFamily(
                "turnout_replica_healthy",
                "1 while a vLLM replica is chosen for requests, 0 while it is ejected or draining.",
                labels=["replica"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        in_flight, healthy = self._families()
        for name, open_requests, up in self.source() if self.source is not None else ():
            in_flight.add_metric([name], open_requests)
            healthy.add_metric([name], 1 if up else 0)
        yield in_flight
        yield healthy


class RouteSeries:
    """The labelled children of one (endpoint, policy, route kind, target), resolved once and kept."""

    def __init__(self, metrics: Metrics, endpoint: str, policy: str, kind: str, target: str) -> None:
        self.metrics, self.endpoint, self.policy, self.kind, self.target = metrics, endpoint, policy, kind, target
        self._by_status: dict[int, Counter] = {}
        m, labels = metrics, (policy, kind, target)
        self.duration_stream = m.request_seconds.labels(*labels, "true")
        self.duration_whole = m.request_seconds.labels(*labels, "false")
        self.ttft = m.ttft_seconds.labels(*labels)
        self.overhead_stream = m.overhead_seconds.labels(kind, "true")
        self.overhead_whole = m.overhead_seconds.labels(kind, "false")
        self.prompt_tokens = m.tokens.labels(*labels, "prompt")
        self.completion_tokens = m.tokens.labels(*labels, "completion")
        self.estimated = m.usage_estimated.labels(kind)
        self.cost_generation = m.cost_dollars.labels(*labels, "generation")
        self.cost_embedding = m.cost_dollars.labels(*labels, "embedding")
        self.cost_search = m.cost_dollars.labels(*labels, "search")
        backend = "openai" if kind == "openai" else "vllm"
        self.upstream = None if kind == NO_ROUTE else m.upstream_seconds.labels(backend, kind)

    def requests(self, status: int) -> Counter:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.requests.labels(
                self.endpoint, self.policy, self.kind, self.target, str(status)
            )
        return child


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._routes: dict[tuple[str, str, str, str], RouteSeries] = {}
        self._decisions: dict[tuple[str, str], Counter] = {}
        route = ["policy", "route_kind", "target"]

        # Requests, latency and what the gateway itself adds.
        self.requests = Counter(
            "turnout_requests",
            "Requests answered (completions and embeddings), by endpoint, policy (the configured model name asked "
            "for, else none), route kind, target and HTTP status (499: the client left first).",
            ["endpoint", *route, "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "turnout_request_duration_seconds",
            "Time from receiving a completion request to sending its last byte.",
            [*route, "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "turnout_time_to_first_token_seconds",
            "Streams: time from receiving the request to sending the first generated text.",
            route,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "turnout_gateway_overhead_seconds",
            "What the gateway adds to a request: its duration minus the time spent waiting on the upstream, "
            "on adapter loads and on retrieval.",
            ["route_kind", "stream"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "turnout_upstream_duration_seconds",
            "Time spent waiting on the upstream (vLLM or OpenAI) for one request, first byte to last.",
            ["backend", "route_kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("turnout_in_flight_requests", "Completion requests being served now.", registry=r)

        # Usage and money.
        self.tokens = Counter(
            "turnout_tokens",
            "Tokens by direction (prompt, completion), as the upstream reported them or, failing that, counted here.",
            [*route, "direction"],
            registry=r,
        )
        self.usage_estimated = Counter(
            "turnout_usage_estimated",
            "Requests whose token counts were estimated with a tokenizer because the upstream reported none.",
            ["route_kind"],
            registry=r,
        )
        self.cost_dollars = Counter(
            "turnout_cost_dollars",
            "Cost of requests in US dollars, by component: generation (OpenAI price or apportioned GPU time), "
            "embedding and search (retrieval).",
            [*route, "component"],
            registry=r,
        )

        # Routing.
        self.decisions = Counter(
            "turnout_routing_decisions",
            "Routing decisions by policy and the rule that matched (default when none did).",
            ["policy", "rule"],
            registry=r,
        )
        self.fallbacks = Counter(
            "turnout_fallbacks",
            "Targets given up before the first byte for the next one in their rule's fallback chain.",
            ["policy", "from_target", "reason"],
            registry=r,
        )
        self.errors = Counter(
            "turnout_errors",
            "Errors answered to clients (or sent in-band in a stream); type is the error's code.",
            ["type"],
            registry=r,
        )

        # Retrieval and embeddings.
        self.retrieval_seconds = Histogram(
            "turnout_retrieval_duration_seconds",
            "Time to retrieve context for one request: query embedding plus search.",
            ["collection"],
            buckets=_RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.retrieval_empty = Counter(
            "turnout_retrieval_empty",
            "Retrievals where no chunk cleared the score threshold.",
            ["collection"],
            registry=r,
        )
        self.retrieval_degraded = Counter(
            "turnout_retrieval_degraded",
            "Retrievals that failed (vector store or embedding model), degrading to a fallback or a 503.",
            ["collection"],
            registry=r,
        )
        self.embedding_seconds = Histogram(
            "turnout_embedding_duration_seconds",
            "Time the embedding model took for one batch (kind: query for routing and retrieval, documents "
            "for ingestion, api for POST /v1/embeddings); cache hits are not counted.",
            ["kind"],
            buckets=_RETRIEVAL_BUCKETS,
            registry=r,
        )

        # Adapters.
        self.adapter_load_seconds = Histogram(
            "turnout_adapter_load_duration_seconds",
            "Time vLLM took to load one LoRA adapter (successful loads; validation and slot waits excluded).",
            ["adapter"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.adapter_loads = Counter(
            "turnout_adapter_loads",
            "Adapter loads by outcome (success, failure, no_capacity) and vLLM replica.",
            ["adapter", "outcome", "replica"],
            registry=r,
        )
        self.adapter_unloads = Counter(
            "turnout_adapter_unloads",
            "Adapters unloaded from vLLM, by reason (eviction to make room, removed from the configuration).",
            ["adapter", "reason"],
            registry=r,
        )
        self.adapter_evictions = Counter(
            "turnout_adapter_evictions",
            "Idle adapters evicted (least recently used first) to make room for another; also counted in "
            "turnout_adapter_unloads_total with reason eviction.",
            ["adapter"],
            registry=r,
        )
        self.adapter_resident = Gauge(
            "turnout_adapter_resident",
            "1 while the adapter is loaded on the vLLM replica, else 0.",
            ["adapter", "replica"],
            registry=r,
        )

        # Quotas.
        self.quota_store_errors = Counter(
            "turnout_quota_store_errors",
            "Quota checks or counts the store (limits.store) could not answer; when: open (served unmetered), "
            "closed (refused with 503) or charge (a finished request not counted).",
            ["when"],
            registry=r,
        )

        # Shadow arms (labels: the policy and rule from the configuration, the arm a target's label).
        self.shadow_requests = Counter(
            "turnout_shadow_requests",
            "Shadow calls by outcome: ok, error (the arm failed), quota (the caller's quota refused it).",
            ["policy", "rule", "arm", "outcome"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "turnout_shadow_dropped",
            "Sampled requests whose shadow arms were dropped because the queue (shadows.queue_size) was full.",
            ["policy"],
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "turnout_shadow_seconds",
            "Duration of a shadow call, to its last byte.",
            ["policy", "arm"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_agreement = Histogram(
            "turnout_shadow_agreement",
            "Cosine similarity of a shadow arm's answer with the primary answer (the gateway's embedding model).",
            ["policy", "arm"],
            buckets=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0),
            registry=r,
        )
        self.shadow_cost = Counter(
            "turnout_shadow_cost_dollars", "US dollars spent on shadow calls.", ["policy", "arm"], registry=r
        )

        # Circuit breakers.
        self.circuit_state = Gauge(
            "turnout_circuit_state",
            "Circuit of an upstream: 0 closed, 1 half-open (one trial request), 2 open (refused at once, "
            "fallbacks used). upstream: openai:MODEL, or vllm while every replica is ejected.",
            ["upstream"],
            registry=r,
        )
        self.circuit_opened = Counter(
            "turnout_circuit_opened", "Times an upstream's circuit opened.", ["upstream"], registry=r
        )

        # vLLM replicas.
        self.replica_ejections = Counter(
            "turnout_replica_ejections",
            "vLLM replicas ejected after vllm.health.eject_after consecutive failures (probes or requests).",
            ["replica"],
            registry=r,
        )
        self.discovery_failures = Counter(
            "turnout_discovery_failures",
            "DNS resolutions of vllm.discovery.dns that failed; the replicas last known were kept.",
            registry=r,
        )
        self._replica_gauges = _ReplicaGauges()
        r.register(self._replica_gauges)

        self.build_info = Gauge("turnout_build_info", "The running Turnout version.", ["version"], registry=r)
        self.build_info.labels(_version()).set(1)

    def circuit_changed(self, upstream: str, state: str) -> None:
        """An upstream's circuit changed state (a breaker tells it)."""
        self.circuit_state.labels(upstream).set(_CIRCUIT_STATES[state])
        if state == "open":
            self.circuit_opened.labels(upstream).inc()

    def declare(self, adapters: Iterable[str], collections: Iterable[str]) -> None:
        """Create the series of every configured adapter and collection at zero, so that ``rate()`` and
        ``increase()`` see their first event (a series born at 1 has no increase to show)."""
        for name in adapters:
            self.adapter_evictions.labels(name)
            for reason in ("eviction", "removed"):
                self.adapter_unloads.labels(name, reason)
        for name in collections:
            self.retrieval_empty.labels(name)
            self.retrieval_degraded.labels(name)

    def declare_replica(self, replica: str, adapters: Iterable[str]) -> None:
        """Create a replica's series at zero (see :meth:`declare`): its ejections, and each adapter's loads and
        residency on it."""
        self.replica_ejections.labels(replica)
        for name in adapters:
            for outcome in _LOAD_OUTCOMES:
                self.adapter_loads.labels(name, outcome, replica)
            self.adapter_resident.labels(name, replica)

    def forget_replica(self, replica: str, adapters: Iterable[str]) -> None:
        """Drop the series of a replica that left the set, so the label stays bounded as replicas come and go."""
        for metric, labels in [(self.replica_ejections, (replica,))] + [
            (metric, (name, *extra, replica))
            for name in adapters
            for metric, extra in [(self.adapter_resident, ())] + [(self.adapter_loads, (o,)) for o in _LOAD_OUTCOMES]
        ]:
            with contextlib.suppress(KeyError):  # never created
                metric.remove(*labels)

    def watch_replicas(self, source: ReplicaFigures) -> None:
        """Read each replica's requests in flight and health from ``source`` whenever metrics are scraped."""
        self._replica_gauges.source = source

    def decision(self, policy: str, rule: str) -> Counter:
        """The decisions counter of (policy, rule), resolved once."""
        key = (policy, rule)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(policy, rule)
        return child

    def route(self, endpoint: str, policy: str, kind: str, target: str) -> RouteSeries:
        key = (endpoint, policy, kind, target)
        series = self._routes.get(key)
        if series is None:
            series = self._routes[key] = RouteSeries(self, endpoint, policy, kind, target)
        return series

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _version() -> str:
    try:
        return version("turnout")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "unknown"


__all__ = ["NO_POLICY", "NO_ROUTE", "Metrics", "RouteSeries"]
