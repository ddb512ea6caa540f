"""``turnout route explain``: the decision for a request body, offline, with every rule's evaluation."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import ConfigOption, fail, load_or_exit

app = typer.Typer(no_args_is_help=True, help="See how requests are routed, without serving them.")


@app.command("explain")
def route_explain(
    config: ConfigOption,
    request_file: Annotated[
        Path, typer.Argument(help="A chat completion or Responses request body (JSON); - for stdin.")
    ],
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="A request header as 'name: value' (repeatable).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The caller's tenant.")] = None,
    request_id: Annotated[str, typer.Option(help="Seeds the arm of a split that is not sticky.")] = "explain",
) -> None:
    """Print the decision for a request, every rule's evaluation and the intent scores, as JSON."""
    from gateway.accounting.ledger import Accounting
    from gateway.accounting.prices import PriceBook
    from gateway.accounting.usage import TokenCounter
    from gateway.dispatch.service import CompletionService, RequestContext
    from gateway.embeddings import Embedder
    from gateway.errors import TurnoutError
    from gateway.metrics import Metrics
    from gateway.protocol.requests import endpoint_of
    from gateway.routing_state import build_routing_table, policies_use_intents

    settings = load_or_exit(config)
    try:
        raw = sys.stdin.buffer.read() if str(request_file) == "-" else request_file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {request_file}: {exc.strerror or exc}", 2) from None
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            raise fail(f"--header {item!r} is not 'name: value'", 2)
        headers[name.strip().lower()] = value.strip()

    async def run() -> dict[str, Any]:
        embedder = Embedder(settings.embeddings) if policies_use_intents(settings) else None
        if embedder is not None:
            await embedder.start()
        try:
            table = await build_routing_table(settings, embedder)
            nothing_served = Accounting(Metrics(), PriceBook(settings.costs, []), TokenCounter(None))
            service = CompletionService(table, {}, embedder, nothing_served)
            return await service.explain(endpoint_of(raw), raw, RequestContext(request_id, tenant, headers))
        finally:
            if embedder is not None:
                embedder.close()

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except TurnoutError as exc:
        raise fail(exc.message) from None
