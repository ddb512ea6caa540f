"""Shadow arms: a sampled request, once its answer has reached the client, is sent again to the other targets
its rule names (``shadow:``), and what every arm measured is kept as evidence for choosing routes.

The client never waits for a shadow: the HTTP layer offers the request after its last byte is sent, into a
bounded queue (``shadows.queue_size``); when the queue is full the shadows are dropped and counted
(``turnout_shadow_dropped_total``), never waited for. ``shadows.workers`` requests have their arms run at
once. Each arm is a real call through the same backends as any request (adapters loaded, retrieval run,
OpenAI called), priced by a ledger like any request, and held against the caller's quotas like any request:
an arm the caller's budget cannot pay for is not run (outcome ``quota``).

Per arm (the primary answer included) one row: latency, time to first token, tokens, dollars, the error if
it failed, and its agreement with the primary answer (the cosine similarity of the two answers by the
gateway's embedding model, when it has one); for RAG arms the citations and the best retrieval score.
Rows go to the evidence store (:mod:`gateway.evidence.store`), figures to the ``turnout_shadow_*`` metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.accounting.ledger import Accounting, Ledger
from gateway.accounting.quotas import Charge, Quotas
from gateway.config.evidence import ShadowsConfig
from gateway.dispatch.backend import Backend, Call, PassToNextRule
from gateway.dispatch.delivery import Delivery
from gateway.dispatch.shadow_request import ShadowRequest
from gateway.errors import TurnoutError
from gateway.evidence.store import ArmRow, RequestRecord
from gateway.evidence.stores import Evidence, has_evidence, open_evidence
from gateway.protocol.usage import generated_texts
from routing import Target, TargetKind

if TYPE_CHECKING:
    from gateway.dispatch.delivery import Completion
    from gateway.embeddings import Embedder

log = logging.getLogger("turnout.shadows")


@dataclass(frozen=True, slots=True)
class _Job:
    request: ShadowRequest
    primary: ArmRow
    charges: list[Charge]


class ShadowRunner:
    def __init__(
        self,
        config: ShadowsConfig,
        backends: Mapping[TargetKind, Backend],
        accounting: Accounting,
        quotas: Quotas,
    ) -> None:
        self.config = config
        self._backends = backends
        self._accounting = accounting
        self._metrics = accounting.metrics
        self._quotas = quotas
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._store: Evidence | None = None
        self.embedder: Embedder | None = None

    @property
    def store(self) -> Evidence:
        """The evidence store, opened on first use (a gateway without shadows never creates the file)."""
        if self._store is None:
            self._store = open_evidence(self.config)
        return self._store

    def has_evidence(self) -> bool:
        return self._store is not None or has_evidence(self.config)

    def offer(self, completion: Completion, charges: Sequence[Charge]) -> bool:
        """Queue a delivered completion's shadow arms; False (and counted) when the queue is full."""
        request = completion.shadowed
        ledger = completion.ledger
        if request is None or ledger.status != 200:
            return False  # the primary failed: there is nothing to compare with
        policy = request.decision.policy or request.features.model
        job = _Job(request, self._primary_row(request, ledger), list(charges))
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.labels(policy).inc()
            return False
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._work(), name=f"shadow-worker-{i}") for i in range(self.config.workers)
            ]
        return True

    def _primary_row(self, request: ShadowRequest, ledger: Ledger) -> ArmRow:
        target = ledger.target or request.decision.target
        answer = "".join(generated_texts(request.endpoint, ledger.events))
        return _row(request, ledger, target, primary=True, status=ledger.status or 200, answer=answer)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except Exception:  # a bug in one job must not stop the worker
                log.exception("shadow arms of request %s failed", job.request.features.request_id)

    async def _run(self, job: _Job) -> None:
        rows = [job.primary]
        for target in job.request.decision.shadows:
            row = await self._arm(job, target)
            if row is not None:
                rows.append(row)
        await self._agree(rows)
        for row in rows[1:]:
            if row.agreement is not None:
                self._metrics.shadow_agreement.labels(row.policy, row.arm).observe(row.agreement)
        await self.store.add(rows)
        await self.store.add_request(_record(job.request))

    async def _arm(self, job: _Job, target: Target) -> ArmRow | None:
        request = job.request
        policy, rule = request.decision.policy or request.features.model, request.decision.rule
        ledger = self._accounting.open(request.endpoint, time.perf_counter(), shadow=True)
        ledger.routed(policy, request.data, request.stream)
        ledger.trying(target)
        if job.charges:
            tokens, dollars = ledger.most_it_may_use([target], self._quotas.reserve_output_tokens)
            try:  # a shadow call is a request like any other: its requests per minute, tokens and dollars
                await self._quotas.admit(job.charges)
                hold = await self._quotas.hold(job.charges, tokens, dollars)
            except TurnoutError:  # used up (QuotaExceeded), or the store refused (closed)
                ledger.finish(429)
                self._metrics.shadow_requests.labels(policy, rule, target.label, "quota").inc()
                return None
            ledger.on_finish = lambda used, cost: self._quotas.settle(hold, used, cost)
        status, error, answer, citations = 200, None, "", None
        delivery: Delivery | None = None
        call = Call(request.endpoint, request.raw, request.data, request.features, ledger)
        try:
            opened = await self._backends[target.kind].open(target, call)
            ledger.answer_opened()
            citations = opened.citations
            delivery = Delivery(opened, {}, ledger, request.stream)
            if request.stream:
                async for _ in delivery.events():
                    pass
                failure = delivery.error
                if failure is not None:
                    status, error = failure.status, failure.code or failure.error_type
            else:
                ledger.keeps_answer = True
                await delivery.body()
            answer = "".join(generated_texts(request.endpoint, ledger.events))
        except TurnoutError as exc:
            status, error = exc.status, exc.code or exc.error_type
        except PassToNextRule:  # a RAG arm whose retrieval came back empty, on a rule that passes it on
            status, error = 404, "empty_retrieval"
        finally:
            if delivery is not None:
                delivery.close()
            ledger.finish(status)
        outcome = "ok" if status == 200 else "error"
        self._metrics.shadow_requests.labels(policy, rule, target.label, outcome).inc()
        self._metrics.shadow_seconds.labels(policy, target.label).observe(ledger.duration_s or 0.0)
        if ledger.cost:
            self._metrics.shadow_cost.labels(policy, target.label).inc(ledger.cost)
        answered = answer if status == 200 else None
        return _row(
            request, ledger, target, primary=False, status=status, error=error, answer=answered, cited=citations
        )

    async def _agree(self, rows: list[ArmRow]) -> None:
        """Set each shadow row's agreement with the primary answer (cosine similarity of their embeddings)."""
        embedder = self.embedder
        answered = [i for i, row in enumerate(rows) if i > 0 and row.status == 200 and row.answer]
        if embedder is None or not answered or not rows[0].answer:
            return
        texts = [rows[0].answer or "", *(rows[i].answer or "" for i in answered)]
        try:
            vectors = np.asarray(await embedder.embed_texts(texts, kind="shadow", remember=False), dtype=np.float64)
        except Exception as exc:  # the figures are kept without agreement rather than lost
            log.warning("could not embed shadow answers for their agreement: %s", exc)
            return
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        unit = vectors / norms[:, None]
        for position, index in enumerate(answered, start=1):
            agreement = float(np.clip(unit[0] @ unit[position], -1.0, 1.0))
            rows[index] = replace(rows[index], agreement=round(agreement, 6))

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        if self._store is not None:
            self._store.close()
            self._store = None


def _row(
    request: ShadowRequest,
    ledger: Ledger,
    target: Target,
    *,
    primary: bool,
    status: int,
    answer: str | None,
    error: str | None = None,
    cited: list[dict[str, Any]] | None = None,
) -> ArmRow:
    """One arm's row from its ledger (finished)."""
    usage, first = ledger.usage, ledger.first_token_at
    scores = [float(c["score"]) for c in cited or [] if isinstance(c.get("score"), float | int)]
    return ArmRow(
        at=request.at,
        request_id=request.features.request_id,
        policy=request.decision.policy or request.features.model,
        rule=request.decision.rule,
        intent=request.decision.intent,
        arm=target.label,
        primary=primary,
        status=status,
        error=error,
        seconds=ledger.duration_s or 0.0,
        ttft_seconds=first - ledger.started if first is not None else None,
        prompt_tokens=usage.prompt if usage is not None else 0,
        completion_tokens=usage.completion if usage is not None else 0,
        usd=ledger.cost or 0.0,
        agreement=None,
        citations=len(cited) if cited is not None else None,
        best_score=max(scores) if scores else None,
        request_text=request.features.text,
        answer=answer,
    )


_CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"})


def _record(request: ShadowRequest) -> RequestRecord:
    """What routing saw of the request, to replay it through another policy (never its credentials)."""
    features, decision = request.features, request.decision
    return RequestRecord(
        at=request.at,
        request_id=features.request_id,
        policy=decision.policy or features.model,
        rule=decision.rule,
        target=decision.target.label,
        features={
            "model": features.model,
            "tenant": features.tenant,
            "headers": {k: v for k, v in features.headers.items() if k.lower() not in _CREDENTIALS},
            "metadata": dict(features.metadata),
            "user": features.user,
            "message_count": features.message_count,
            "token_estimate": features.token_estimate,
            "conversation": features.conversation,
        },
        embedding=list(features.embedding) if features.embedding is not None else None,
        text=features.text,
    )


__all__ = ["ShadowRequest", "ShadowRunner"]
