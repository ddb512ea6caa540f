"""The ``turnout`` command: serve, check and explain configuration, inspect adapters."""

from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.config import ConfigError, TurnoutConfig, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Check the configuration file and print its schema.")
adapters_app = typer.Typer(no_args_is_help=True, help="LoRA adapters: declared, valid, resident.")
route_app = typer.Typer(no_args_is_help=True, help="See how requests are routed, without serving them.")
app.add_typer(config_app, name="config")
app.add_typer(adapters_app, name="adapters")
app.add_typer(route_app, name="route")


def _add_rag_commands() -> None:
    from gateway.cli_rag import app as rag_app

    app.add_typer(rag_app, name="rag")


_add_rag_commands()

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The YAML configuration file.")]


def load_or_exit(path: Path) -> TurnoutConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"turnout: invalid configuration ({len(exc.problems)} problem(s)):", err=True)
        for line in exc.problems:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
) -> None:
    """Serve the OpenAI-compatible API."""
    import uvicorn

    from gateway.app import create_asgi_app

    settings = load_or_exit(config)
    server = settings.server
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_asgi_app(settings, config),
        host=host or server.host,
        port=port or server.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the configuration file's JSON Schema."""
    typer.echo(json.dumps(TurnoutConfig.model_json_schema(), indent=2))


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The YAML configuration file.")]) -> None:
    """Validate a configuration file and every adapter it declares, without serving."""
    settings = load_or_exit(file)
    problems = [row["problem"] for row in _adapter_rows(settings, resident=None) if row["problem"]]
    for problem in problems:
        typer.echo(f"{file}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(
        f"{file}: OK: base model {settings.base_model_name!r} on {settings.vllm.url}, "
        f"{len(settings.adapters)} adapter(s)"
    )


@adapters_app.command("list")
def adapters_list(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Declared adapters, whether each is valid, and whether vLLM holds it now."""
    settings = load_or_exit(config)
    resident = _resident_on_vllm(settings)
    rows = _adapter_rows(settings, resident)
    if as_json:
        typer.echo(json.dumps({"vllm": settings.vllm.url, "reachable": resident is not None, "adapters": rows}))
        return
    if resident is None:
        typer.echo(f"(vLLM at {settings.vllm.url} does not answer: residency unknown)", err=True)
    typer.echo(f"{'NAME':<24} {'RESIDENT':<9} {'VALID':<6} PATH")
    for row in rows:
        state = {True: "yes", False: "no", None: "?"}[row["resident"]]
        typer.echo(f"{row['name']:<24} {state:<9} {'yes' if not row['problem'] else 'NO':<6} {row['path']}")
        if row["problem"]:
            typer.echo(f"    {row['problem']}")


@route_app.command("explain")
def route_explain(
    config: ConfigOption,
    request_file: Annotated[Path, typer.Argument(help="A chat completion request body (JSON); - for stdin.")],
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="A request header as 'name: value' (repeatable).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The caller's tenant.")] = None,
    request_id: Annotated[str, typer.Option(help="Seeds the arm of a split that is not sticky.")] = "explain",
) -> None:
    """Print the decision for a request, every rule's evaluation and the intent scores, as JSON."""
    import asyncio

    from gateway.accounting.ledger import Accounting
    from gateway.accounting.prices import PriceBook
    from gateway.accounting.usage import TokenCounter
    from gateway.dispatch.service import CompletionService, RequestContext
    from gateway.embeddings import Embedder
    from gateway.errors import TurnoutError
    from gateway.metrics import Metrics
    from gateway.routing_state import build_routing_table, policies_use_intents

    settings = load_or_exit(config)
    try:
        raw = sys.stdin.buffer.read() if str(request_file) == "-" else request_file.read_bytes()
    except OSError as exc:
        typer.echo(f"turnout: cannot read {request_file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep:
            typer.echo(f"turnout: --header {item!r} is not 'name: value'", err=True)
            raise typer.Exit(2)
        headers[name.strip().lower()] = value.strip()

    async def run() -> dict[str, Any]:
        embedder = Embedder(settings.embeddings) if policies_use_intents(settings) else None
        if embedder is not None:
            await embedder.start()
        try:
            table = await build_routing_table(settings, embedder)
            nothing_served = Accounting(Metrics(), PriceBook(settings.costs, []), TokenCounter(None))
            service = CompletionService(table, {}, embedder, nothing_served)
            return await service.explain("chat", raw, RequestContext(request_id, tenant, headers))
        finally:
            if embedder is not None:
                embedder.close()

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except TurnoutError as exc:
        typer.echo(f"turnout: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _adapter_rows(settings: TurnoutConfig, resident: set[str] | None) -> list[dict[str, Any]]:
    from gateway.adapters.validation import validate_adapter
    from gateway.components import base_model_facts
    from gateway.errors import InvalidAdapter

    base = base_model_facts(settings)
    rows = []
    for name, spec in settings.adapters.items():
        try:
            validate_adapter(name, spec.path, max_rank=settings.vllm.max_lora_rank, base=base)
            problem = ""
        except InvalidAdapter as exc:
            problem = exc.message
        rows.append(
            {
                "name": name,
                "path": str(spec.path),
                "resident": None if resident is None else name in resident,
                "problem": problem,
            }
        )
    return rows


def _resident_on_vllm(settings: TurnoutConfig) -> set[str] | None:
    # One short call from a one-shot command: the standard library is enough, no session to pool.
    request = urllib.request.Request(settings.vllm.url + "/v1/models")
    if settings.vllm.api_key:
        request.add_header("Authorization", f"Bearer {settings.vllm.api_key.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return {str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m}


def main() -> None:
    app()
