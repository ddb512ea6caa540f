"""The RAG backend: retrieve, put the chunks into the prompt, answer with the generator, cite.

The generator is the base model or an adapter on vLLM (the hybrid: the adapter brings tone and format,
retrieval brings the facts). What happens when nothing clears the score threshold is the rule's call:
answer without context, pass the request to the next rule, or refuse in a written answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from gateway.config.model import CollectionConfig
from gateway.dispatch.answers import written_answer
from gateway.dispatch.backend import Call, Opened, PassToNextRule, VllmBackend
from gateway.dispatch.shaping import shape_body
from gateway.embeddings import Embedder
from gateway.errors import RetrievalUnavailable, TurnoutError
from gateway.failures import Boundary, translate
from gateway.metrics import Metrics
from gateway.rag.retrieval import Hit, render_context, retrieve
from routing import RagOptions, Target

if TYPE_CHECKING:  # the vector store client is imported only where retrieval is configured
    from gateway.rag.store import VectorStore


class RagBackend:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        collections: Mapping[str, CollectionConfig],
        generator: VllmBackend,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self._collections = collections
        self.generator = generator
        self.metrics = metrics

    def use_collections(self, collections: Mapping[str, CollectionConfig]) -> None:
        """Answer requests routed from now on with these collections' settings (a reload)."""
        self._collections = collections

    async def open(self, target: Target, call: Call) -> Opened:
        collection = self._collections[target.name]
        options = target.rag or RagOptions()
        top_k = options.top_k or collection.top_k
        threshold = options.score_threshold if options.score_threshold is not None else collection.score_threshold
        on_empty = options.on_empty or collection.on_empty
        ledger = call.ledger
        started = time.perf_counter()
        try:
            with ledger.waiting_elsewhere():
                hits = await self._retrieve(target.name, call, top_k, threshold)
        except RetrievalUnavailable:
            self.metrics.retrieval_degraded.labels(target.name).inc()
            raise
        self.metrics.retrieval_seconds.labels(target.name).observe(time.perf_counter() - started)
        # every retrieval pays for its query's embedding, cached or not, so the price is stable
        priced = ledger.prices.embedding_per_token > 0
        ledger.retrieved(self.embedder.query_tokens(call.features.text) if priced else 0)
        if not hits:
            self.metrics.retrieval_empty.labels(target.name).inc()
        headers = {"x-turnout-citations": str(len(hits)), "x-turnout-retrieval": "hits" if hits else "empty"}
        if not hits and on_empty == "next_rule":
            raise PassToNextRule(f"no chunk of {target.name!r} scored {threshold:g} or more", headers)
        if not hits and on_empty == "refuse":
            answer = written_answer(
                call.endpoint, str(call.data.get("model")), collection.refuse_message, bool(call.data.get("stream"))
            )
            return Opened(answer).cited([], headers)
        assert target.generator is not None, "a rag target always has a generator"
        prompt = target.system_prompt
        if hits:
            context = render_context(hits, collection.template)
            prompt = f"{prompt}\n\n{context}" if prompt else context
        shaped = replace(target.generator, system_prompt=prompt, caps=target.caps)
        ledger.added_to_prompt(prompt)
        citations = [hit.citation(n, collection.snippet_chars) for n, hit in enumerate(hits, start=1)]
        shape = partial(shape_body, call.raw, call.data, call.endpoint, shaped)
        opened = await self.generator.open_shaped(target.generator, call, shape)
        return opened.cited(citations, headers)

    async def _retrieve(self, collection: str, call: Call, top_k: int, threshold: float) -> list[Hit]:
        features = call.features
        try:
            # The routing embedding when the policy computed one; else the embedder's cache makes sure the
            # same text is never embedded twice.
            vector = features.embedding or await self.embedder.embed_query(features.text)
            return await retrieve(self.store, collection, features.tenant, vector, top_k, threshold)
        except TurnoutError:
            raise
        except Exception as exc:  # the store's or the model's failure: see gateway.failures
            raise translate(exc, Boundary.RETRIEVAL, f"retrieval from collection {collection!r}") from exc
