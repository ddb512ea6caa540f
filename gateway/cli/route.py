"""``turnout route explain``: the decision for a request body, offline, with every rule's evaluation."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import USAGE, ConfigOption, fail, group, load_or_exit

app = group("See how requests are routed, without serving them.")


@app.command("explain")
def route_explain(
    config: ConfigOption,
    request_file: Annotated[
        Path,
        typer.Argument(
            metavar="REQUEST", help="A chat completion or Responses request body (JSON); - reads it from stdin."
        ),
    ],
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="'NAME: VALUE'", help="A request header (repeatable)."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            metavar="TENANT", help="The tenant the caller's API key would give (what tenant: conditions match)."
        ),
    ] = None,
    request_id: Annotated[
        str, typer.Option(metavar="ID", help="The request id, which picks the arm of a split that is not sticky.")
    ] = "explain",
) -> None:
    """Print the decision for a request, every rule's evaluation and the intent scores, as JSON.

    Runs the configured policies offline, as POST /v1/route/explain does on a running gateway: nothing is
    sent anywhere. Loads the embedding model when a policy uses intents.

    Exit status: 0 with the decision printed; 1 when the gateway would refuse the request (an unknown
    model, an invalid body) or the embedding model cannot be loaded; 2 when the configuration cannot be
    used, the request file cannot be read or a header is not NAME: VALUE.
    """
    from gateway.accounting.ledger import Accounting
    from gateway.accounting.prices import PriceBook
    from gateway.accounting.usage import TokenCounter
    from gateway.components import request_limits
    from gateway.dispatch.service import CompletionService, RequestContext
    from gateway.embeddings import Embedder, EmbedderError
    from gateway.errors import TurnoutError
    from gateway.metrics import Metrics
    from gateway.protocol.requests import endpoint_of
    from gateway.routing_state import build_routing_table, policies_use_intents

    settings = load_or_exit(config)
    try:
        raw = sys.stdin.buffer.read() if str(request_file) == "-" else request_file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {request_file}: {exc.strerror or exc}", USAGE) from None
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            raise fail(f"--header {item!r} is not 'name: value'", USAGE)
        headers[name.strip().lower()] = value.strip()

    async def run() -> dict[str, Any]:
        embedder = Embedder(settings.embeddings) if policies_use_intents(settings) else None
        if embedder is not None:
            await embedder.start()
        try:
            table = await build_routing_table(settings, embedder)
            nothing_served = Accounting(Metrics(), PriceBook(settings.costs, []), TokenCounter(None))
            service = CompletionService(table, {}, embedder, nothing_served, request_limits(settings))
            return await service.explain(endpoint_of(raw), raw, RequestContext(request_id, tenant, headers))
        finally:
            if embedder is not None:
                embedder.close()

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except TurnoutError as exc:
        raise fail(exc.message) from None
    except EmbedderError as exc:
        raise fail(str(exc)) from None
