"""The embeddings service: ``POST /v1/embeddings`` answered by the gateway's own embedding model.

The model is the one semantic routing and retrieval use (:class:`gateway.embeddings.Embedder`), so a
vector from this endpoint is the vector retrieval would compute for the same text: same model, same
normalisation, same cache. A client that embeds its question here and then asks a policy the same question
pays for one model run, not two. Only a request of one text is kept in that cache: a batch is usually
documents, embedded once, and would evict the queries routing repeats.

Every request is bounded before the model runs: at most ``embeddings.max_inputs`` texts, each within what
the model reads (its own token limit, and the characters the embedder keeps), and at most
``embeddings.max_request_tokens`` in all. A text longer than the model reads is refused rather than cut
short: its vector would describe only its beginning, and the client could not tell.

The model runs on one worker thread that routing shares. A request's texts are therefore sent to it in
small batches, one at a time, so a large request delays a routing query by one batch (under a second),
not by the whole request; a client that leaves stops its request between two batches. Texts are
batched by length, as sentence-transformers itself does, so short texts are not padded to long ones.

``accept`` checks a request and returns an :class:`EmbeddingJob`; the HTTP layer runs it while watching the
client and tells it how the request ended, which is recorded once (requests, duration, tokens, dollars).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.accounting.ledger import SHUT_DOWN, Accounting, dollars
from gateway.config.model import EmbeddingsConfig
from gateway.embeddings import MAX_EMBED_CHARS, Embedder
from gateway.errors import InvalidRequest, ModelNotFound, RequestTooLarge, TurnoutError
from gateway.failures import Boundary, translate
from gateway.metrics import NO_POLICY, NO_ROUTE
from gateway.protocol.embeddings import (
    ENDPOINT,
    EmbeddingRequest,
    embedding_list,
    float32_base64,
    parse_embedding_request,
)

KIND = "embedding"  # the route kind of these requests in the metrics
MODEL_RUN = "api"  # the kind label of this endpoint's model runs in turnout_embedding_duration_seconds
# The most tokens (padded to the longest text of the batch) sent to the model at once, which bounds how long
# a routing query waits behind a request: 0.15-0.7 s on two cores (measured 6,500 tokens/s batched on an idle
# machine, 1,400 with 200-token chunks). 32 short queries still fit in one batch; long texts gain little
# from larger batches, their cost being the model's arithmetic.
_BATCH_TOKENS = 1024
# Above this many vectors, the answer is written in a thread (2,048 vectors take ~50 ms to write).
_RENDER_INLINE = 64


@dataclass(frozen=True, slots=True)
class EmbeddingAnswer:
    body: bytes
    headers: dict[str, str]


class EmbeddingService:
    """Serves ``POST /v1/embeddings`` with the embedder of the moment (:meth:`use`, at start-up and on reload)."""

    def __init__(self, config: EmbeddingsConfig, accounting: Accounting) -> None:
        self.config = config
        self.name = config.served_name
        self.accounting = accounting
        self._embedder: Embedder | None = None

    def use(self, embedder: Embedder | None, served: bool) -> None:
        """Serve with ``embedder`` from now on, if ``served`` (the configuration's ``serves_embeddings``)."""
        self._embedder = embedder if served else None

    def describe(self) -> dict[str, Any] | None:
        """The ``turnout`` object of the model's ``/v1/models`` entry; None when it is not served."""
        embedder = self._embedder
        if embedder is None:
            return None
        return {
            "kind": KIND,
            "dimension": embedder.dimension,
            "max_input_tokens": embedder.max_tokens,
            "max_inputs": self.config.max_inputs,
            "max_request_tokens": self.config.max_request_tokens,
        }

    async def accept(self, raw: bytes, arrived: float) -> EmbeddingJob:
        """Check the request (arrived at ``arrived``, ``time.perf_counter()``); a refusal is recorded and raised."""
        record = _Record(self.accounting, arrived)
        try:
            request = parse_embedding_request(raw)
            embedder = self._resolve(request.model)
            record.served_by(self.name)
            tokens = await self._check(request, embedder)
        except TurnoutError as exc:
            record.fail(exc)
            raise
        except Exception as exc:  # the tokenizer failed
            error = translate(exc, Boundary.RETRIEVAL, "the embedding model's tokenizer")
            record.fail(error)
            raise error from exc
        except BaseException:
            # Cancelled: nothing watches the client while a request is checked, so it is the server stopping.
            record.finish(SHUT_DOWN)
            raise
        return EmbeddingJob(self, request, embedder, tokens, record)

    def _resolve(self, model: str) -> Embedder:
        embedder = self._embedder
        if embedder is None:
            why = "embeddings.serve is false" if self.config.serve is False else "set embeddings.serve: true for one"
            raise ModelNotFound(f"this gateway serves no embedding model ({why})", param="model")
        if model != self.name:
            raise ModelNotFound(
                f"The model {model!r} does not exist here; the embedding model is {self.name!r}", param="model"
            )
        return embedder

    async def _check(self, request: EmbeddingRequest, embedder: Embedder) -> list[int]:
        """The tokens of each text, once every limit is checked."""
        texts, limit = request.texts, self.config.max_inputs
        if len(texts) > limit:
            raise InvalidRequest(f"input: {len(texts)} texts; at most {limit} are accepted per request", param="input")
        if request.dimensions is not None and request.dimensions != embedder.dimension:
            raise InvalidRequest(
                f"dimensions: this model's embeddings have {embedder.dimension} dimensions; it cannot give "
                f"{request.dimensions} (leave dimensions out)",
                param="dimensions",
            )
        for index, text in enumerate(texts):
            if len(text) > MAX_EMBED_CHARS:
                raise _too_long(request, index, f"is {len(text)} characters; the model reads at most {MAX_EMBED_CHARS}")
        tokens = await embedder.input_tokens(texts)
        most = embedder.max_tokens
        for index, count in enumerate(tokens):
            if count > most:
                raise _too_long(request, index, f"is {count} tokens; the model reads at most {most}")
        total, cap = sum(tokens), self.config.max_request_tokens
        if total > cap:
            raise RequestTooLarge(
                f"input: {total} tokens in all; at most {cap} are accepted per request: send fewer texts at a time",
                param="input",
            )
        return tokens


def _too_long(request: EmbeddingRequest, index: int, why: str) -> InvalidRequest:
    param = request.param(index)
    return InvalidRequest(
        f"{param} {why} (special tokens included); split it into shorter texts",
        param=param,
        code="context_length_exceeded",
    )


class _Record:
    """How one request is recorded in the metrics: once, under the model's name once the request names it."""

    def __init__(self, accounting: Accounting, arrived: float) -> None:
        self._accounting = accounting
        self._arrived = arrived
        self._labels = (NO_POLICY, NO_ROUTE, NO_ROUTE)
        self._done = False

    def served_by(self, name: str) -> None:
        self._labels = (name, KIND, f"{KIND}:{name}")

    def fail(self, exc: TurnoutError) -> None:
        """The request ends with ``exc``: counted once, and the envelope says what it cost (nothing)."""
        self._accounting.count_error(exc)
        exc.add_headers({"x-turnout-cost-usd": dollars(0.0)})
        self.finish(exc.status)

    def finish(self, status: int, tokens: int = 0, cost: float = 0.0) -> None:
        if self._done:
            return
        self._done = True
        metrics = self._accounting.metrics
        policy, kind, target = self._labels
        metrics.requests.labels(ENDPOINT, policy, kind, target, str(status)).inc()
        metrics.request_seconds.labels(policy, kind, target, "false").observe(time.perf_counter() - self._arrived)
        if tokens:
            metrics.tokens.labels(policy, kind, target, "prompt").inc(tokens)
        if cost:
            metrics.cost_dollars.labels(policy, kind, target, "embedding").inc(cost)


class EmbeddingJob:
    """One accepted request: :meth:`run` computes its answer; :meth:`finish` (or :meth:`fail`) records it,
    once, however it ended."""

    def __init__(
        self,
        service: EmbeddingService,
        request: EmbeddingRequest,
        embedder: Embedder,
        tokens: list[int],
        record: _Record,
    ) -> None:
        self._service = service
        self.request = request
        self._embedder = embedder
        self.tokens = tokens
        self._record = record
        self._cost = 0.0
        self.used = (0, 0.0)  # tokens and dollars, once answered

    @property
    def most_it_may_use(self) -> tuple[int, float]:
        """The texts' tokens (counted on acceptance) and what embedding them costs."""
        total = sum(self.tokens)
        return total, total * self._service.accounting.prices.embedding_per_token

    async def run(self) -> EmbeddingAnswer:
        """Embed the texts, batch by batch, and write the answer (:class:`RetrievalUnavailable` if the model
        fails)."""
        request = self.request
        try:
            vectors = await self._embed(request.texts)
        except TurnoutError:
            raise
        except Exception as exc:  # torch's and sentence-transformers' many kinds: the model failed
            raise translate(exc, Boundary.RETRIEVAL, "the embedding model") from exc
        total = sum(self.tokens)
        self._cost = total * self._service.accounting.prices.embedding_per_token
        name = self._service.name
        if len(vectors) > _RENDER_INLINE:
            body = await asyncio.to_thread(_render, name, vectors, request.encoding_format, total)
        else:
            body = _render(name, vectors, request.encoding_format, total)
        return EmbeddingAnswer(body, {"x-turnout-cost-usd": dollars(self._cost)})

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = [[] for _ in texts]
        remember = len(texts) == 1  # a lone text is likely a query (see the module's docstring)
        for batch in _batches(self.tokens, self._service.config.batch_size):
            found = await self._embedder.embed_texts([texts[i] for i in batch], kind=MODEL_RUN, remember=remember)
            for i, vector in zip(batch, found, strict=True):
                vectors[i] = vector
        return vectors

    def fail(self, exc: TurnoutError) -> None:
        """The request ends with ``exc`` (nothing is charged)."""
        self._record.fail(exc)

    def finish(self, status: int) -> None:
        """Record the request: its status, duration and, answered, its tokens and dollars."""
        if status == 200:
            self.used = (sum(self.tokens), self._cost)
            self._record.finish(status, *self.used)
        else:
            self._record.finish(status)


def _batches(tokens: Sequence[int], most: int) -> list[list[int]]:
    """The texts' indices in batches for the model: shortest first, at most ``most`` texts and
    ``_BATCH_TOKENS`` padded tokens each (a text longer than that alone)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in sorted(range(len(tokens)), key=tokens.__getitem__):
        if batch and (len(batch) >= most or (len(batch) + 1) * tokens[i] > _BATCH_TOKENS):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def _render(model: str, vectors: list[list[float]], encoding: str, tokens: int) -> bytes:
    if encoding == "base64":
        return embedding_list(model, [float32_base64(v) for v in vectors], tokens)
    import numpy as np  # loaded with the model already; a gateway without one never gets here

    return embedding_list(model, list(np.asarray(vectors, dtype=np.float32)), tokens)


__all__ = ["KIND", "MODEL_RUN", "EmbeddingAnswer", "EmbeddingJob", "EmbeddingService"]
