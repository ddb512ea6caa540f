"""``POST /v1/embeddings``: vectors from the gateway's embedding model, in OpenAI's shape.

A FastAPI route (not the completions' plain Starlette one: a request here costs milliseconds of the model,
so FastAPI's few microseconds do not show). Admitted like every route (id, key, bounded body), checked and
answered by :mod:`gateway.dispatch.embeddings`; while the model works the client is watched, and one that
leaves stops its request between two batches of texts.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.accounting.ledger import CLIENT_LEFT, SHUT_DOWN
from gateway.accounting.quotas import Charge, Hold, Quotas
from gateway.api.deps import BodyDep, ComponentsDep, IdentityDep
from gateway.api.responses import until_done_or_disconnect
from gateway.dispatch.embeddings import EmbeddingAnswer, EmbeddingJob
from gateway.errors import TurnoutError
from gateway.protocol.embeddings import PATH

router = APIRouter()


@router.post(PATH)
async def create_embeddings(request: Request, body: BodyDep, parts: ComponentsDep, who: IdentityDep) -> Response:
    quotas = parts.quotas
    charges = quotas.charges(who.key_id, who.quota, who.tenant)
    admitted = await quotas.admit(charges) if charges else {}  # requests per minute, and nothing used up
    async with parts.admission.slot():  # embedding is the gateway's own work, as a completion's routing is
        job = await parts.embeddings.accept(body, request.scope["state"]["arrived"])
        if not charges:
            return await _answer(job, request)
        hold = await _hold(quotas, charges, job, admitted)
        try:
            response = await _answer(job, request)
        except TurnoutError as exc:
            exc.add_headers(admitted | hold.headers)
            raise
        finally:
            quotas.settle(hold, *job.used)
        response.headers.update(admitted | hold.headers)
        return response


async def _hold(quotas: Quotas, charges: list[Charge], job: EmbeddingJob, admitted: dict[str, str]) -> Hold:
    """Hold the texts' tokens (counted already) and their price against the caller's quotas."""
    tokens, dollars = job.most_it_may_use
    try:
        return await quotas.hold(charges, tokens, dollars)
    except TurnoutError as exc:
        exc.add_headers(admitted)
        job.fail(exc)
        raise


async def _answer(job: EmbeddingJob, request: Request) -> Response:
    """Run ``job`` while watching the client; record how the request ended."""
    answers: list[EmbeddingAnswer] = []

    async def run() -> None:
        answers.append(await job.run())

    try:
        finished = await until_done_or_disconnect(run(), request.receive)
    except asyncio.CancelledError:
        job.finish(SHUT_DOWN)
        raise
    except TurnoutError as exc:
        job.fail(exc)
        raise
    except Exception:
        job.finish(500)  # a bug: the middleware answers it with the envelope
        raise
    if not finished:
        job.finish(CLIENT_LEFT)
        return Response(status_code=CLIENT_LEFT)  # never sent: no one is there to read it
    job.finish(200)
    answer = answers[0]
    return Response(answer.body, headers=answer.headers, media_type="application/json")
