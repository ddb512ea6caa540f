"""Prometheus metrics, in a registry of the app's own (built in the lifespan, never module-global).

Label values are bounded by the configuration (collection names), never by callers: no user ids,
keys or prompt text become labels.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

_RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.retrieval_seconds = Histogram(
            "turnout_retrieval_duration_seconds",
            "Time to retrieve context for one request: query embedding plus search.",
            ["collection"],
            buckets=_RETRIEVAL_BUCKETS,
            registry=self.registry,
        )
        self.retrieval_empty = Counter(
            "turnout_retrieval_empty",
            "Retrievals where no chunk cleared the score threshold.",
            ["collection"],
            registry=self.registry,
        )
        self.retrieval_degraded = Counter(
            "turnout_retrieval_degraded",
            "Retrievals that failed (vector store or embedding model), degrading to a fallback or a 503.",
            ["collection"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
