"""``turnout route explain``: the decision for a request body, offline, with every rule's evaluation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from gateway.config import TurnoutConfig
    from gateway.embeddings import Embedder
    from routing import RoutingTable

from gateway.cli.common import USAGE, ConfigOption, SinceOption, fail, group, load_or_exit, read_evidence

app = group("See how requests are routed, without serving them.")


@contextlib.asynccontextmanager
async def routing(settings: TurnoutConfig) -> AsyncIterator[tuple[RoutingTable, Embedder | None]]:
    """The configuration's routing table, with the embedding model loaded when its policies use intents
    (closed on the way out)."""
    from gateway.embeddings import Embedder
    from gateway.routing_state import build_routing_table, policies_use_intents

    embedder = Embedder(settings.embeddings) if policies_use_intents(settings) else None
    if embedder is not None:
        await embedder.start()
    try:
        yield await build_routing_table(settings, embedder), embedder
    finally:
        if embedder is not None:
            embedder.close()


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
    from gateway.embeddings import EmbedderError
    from gateway.errors import TurnoutError
    from gateway.metrics import Metrics
    from gateway.protocol.requests import endpoint_of

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
        async with routing(settings) as (table, embedder):
            nothing_served = Accounting(Metrics(), PriceBook(settings.costs, []), TokenCounter(None))
            service = CompletionService(table, {}, embedder, nothing_served, request_limits(settings))
            return await service.explain(endpoint_of(raw), raw, RequestContext(request_id, tenant, headers))

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except TurnoutError as exc:
        raise fail(exc.message) from None
    except EmbedderError as exc:
        raise fail(str(exc)) from None


@app.command("replay")
def route_replay(
    config: ConfigOption,
    since: SinceOption = "24h",
    evidence: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="A SQLite evidence file (default: the configuration's store)."),
    ] = None,
    samples: Annotated[int, typer.Option(min=0, max=100, help="Sample requests shown per move.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Replay the recorded requests through the policies of --config (a candidate), before changing anything:
    how many decisions would change, and to what, per rule, with sample requests.

    The recorded requests are those sampled for shadow arms; each is decided again from the features routing
    saw of it (its query embedding included). One that the candidate could only decide from its text
    (keywords, regex, an intent not embedded then) is not replayable unless shadows.keep_texts kept the text.

    Exit status: 0 with the replay printed; 2 when the configuration or the evidence store cannot be used, or
    --since is not a span.
    """
    from gateway.embeddings import EmbedderError
    from gateway.evidence.replay import replay

    settings = load_or_exit(config)
    if evidence is not None and not evidence.is_file():
        raise fail(f"{evidence}: no evidence recorded there", USAGE)
    records = read_evidence(settings.shadows, since, lambda store, cutoff: store.read_requests(since=cutoff), evidence)
    if records is None:
        raise fail(f"{settings.shadows.store}: no evidence recorded there (turn on shadow arms first)", USAGE)

    async def run() -> dict[str, Any]:
        async with routing(settings) as (table, embedder):
            embed = embedder.embed_texts if embedder is not None else None
            return (await replay(records, table, embed, samples)).describe()

    try:
        found = asyncio.run(run())
    except EmbedderError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    typer.echo(
        f"{found['requests']} recorded requests in the last {since}: {found['changed']} would change, "
        f"{found['unchanged']} would not, {found['not_replayable']} not replayable, "
        f"{found['policy_gone']} of a policy the candidate lacks"
    )
    for rule, counts in found["by_rule"].items():
        typer.echo(f"  {rule}: {counts['changed']} of {counts['requests']} would change")
    for move in found["moves"]:
        old, new = move["from"], move["to"]
        typer.echo(
            f"  {move['policy']}: {old['rule']} ({old['target']}) -> {new['rule']} ({new['target']}): "
            f"{move['requests']} request(s), e.g. {', '.join(move['samples'])}"
        )
