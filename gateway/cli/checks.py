"""``turnout config`` and ``turnout adapters``: is the configuration usable, and where are the adapters."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import ConfigOption, HttpError, JsonClient, Unreachable, fail, group, load_or_exit
from gateway.config import TurnoutConfig

config_app = group("Check the configuration file and print its schema.")
adapters_app = group("LoRA adapters: declared, valid, resident; and the gateway's view of its vLLM replicas.")
INVALID_ADAPTER = 1
NOT_AS_DECLARED = 1


@config_app.command("schema")
def config_schema() -> None:
    """Print the configuration file's JSON Schema (every key, its type, default and description)."""
    typer.echo(json.dumps(TurnoutConfig.model_json_schema(), indent=2))


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(metavar="FILE", help="The YAML configuration file.")]) -> None:
    """Validate a configuration file, and every adapter it declares, without serving.

    Applies the TURNOUT_* environment variables as serve does, checks every key, every reference between
    sections and every file the configuration points at, then reads each adapter's files (no server is
    contacted). Prints one line per problem.

    Exit status: 0 when the file and every adapter are valid; 1 when the file is valid but an adapter is
    not (the gateway would start, and refuse that adapter); 2 when the file cannot be used.
    """
    settings = load_or_exit(file)
    problems = [row["problem"] for row in _adapter_rows(settings, resident=None) if row["problem"]]
    for problem in problems:
        typer.echo(f"{file}: {problem}", err=True)
    if problems:
        raise typer.Exit(INVALID_ADAPTER)
    typer.echo(
        f"{file}: OK: base model {settings.base_model_name!r} on {settings.vllm.describe()}, "
        f"{len(settings.adapters)} adapter(s)"
    )


@adapters_app.command("list")
def adapters_list(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The declared adapters: whether each is valid, and whether vLLM holds it now.

    Residency is asked of every vLLM replica (vllm.url, vllm.replicas, or the addresses vllm.discovery.dns
    resolves to); an adapter is resident when one of them lists it, and unknown when none answers.

    Exit status: 0 when every adapter is valid, 1 when one is not (the table, or the JSON, says which
    and why), 2 when the configuration cannot be used.
    """
    settings = load_or_exit(config)
    listings = _listings(settings)
    answered = [names for names in listings.values() if names is not None]
    resident = set().union(*answered) if answered else None
    rows = _adapter_rows(settings, resident)
    for row in rows:
        row["replicas"] = [r for r, names in listings.items() if names is not None and row["vllm_name"] in names]
    invalid = [row["name"] for row in rows if row["problem"]]
    if as_json:
        reachable = {replica: names is not None for replica, names in listings.items()}
        document = {"vllm": settings.vllm.describe(), "reachable": resident is not None, "replicas": reachable}
        typer.echo(json.dumps({**document, "adapters": rows}))
    else:
        if resident is None:
            typer.echo(f"(vLLM at {settings.vllm.describe()} does not answer: residency unknown)", err=True)
        typer.echo(f"{'NAME':<24} {'RESIDENT':<9} {'VALID':<6} PATH")
        for row in rows:
            state = {True: "yes", False: "no", None: "?"}[row["resident"]]
            typer.echo(f"{row['name']:<24} {state:<9} {'yes' if not row['problem'] else 'NO':<6} {row['path']}")
            if row["problem"]:
                typer.echo(f"    {row['problem']}")
    if invalid:
        typer.echo(f"turnout: {len(invalid)} of {len(rows)} adapter(s) invalid: {', '.join(invalid)}", err=True)
        raise typer.Exit(INVALID_ADAPTER)


def _adapter_rows(settings: TurnoutConfig, resident: set[str] | None) -> list[dict[str, Any]]:
    from gateway.adapters.served import resolve, unresolved_reason
    from gateway.adapters.validation import validate_adapter
    from gateway.components import base_model_facts
    from gateway.errors import InvalidAdapter

    base = base_model_facts(settings)
    rows = []
    for name, spec in resolve(settings.adapters, settings.adapter_store).items():
        problem = ""
        if spec.path is None:
            problem = unresolved_reason(name, spec)
        else:
            try:
                validate_adapter(name, spec.path, max_rank=settings.vllm.max_lora_rank, base=base)
            except InvalidAdapter as exc:
                problem = exc.message
        lora = spec.vllm_name(name)
        rows.append(
            {
                "name": name,
                "vllm_name": lora,
                "version": spec.version,
                "path": "" if spec.path is None else str(spec.path),
                "resident": None if resident is None else lora in resident,
                "problem": problem,
            }
        )
    return rows


def _replica_urls(settings: TurnoutConfig) -> list[str]:
    """The replicas as the gateway would find them now (discovery: the name resolved once, here)."""
    from gateway.fleet.discovery import address_url

    discovery = settings.vllm.discovery
    if discovery is None:
        return settings.vllm.static_urls
    try:
        infos = socket.getaddrinfo(discovery.dns, discovery.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        typer.echo(f"(cannot resolve {discovery.dns}: {exc})", err=True)
        return []
    return [address_url(discovery.scheme, a, discovery.port) for a in sorted({str(i[4][0]) for i in infos})]


def _listings(settings: TurnoutConfig) -> dict[str, set[str] | None]:
    """Per replica (host:port), the names its /v1/models lists, or None when it does not answer."""
    from gateway.fleet.replica import replica_name

    key = settings.vllm.api_key.get_secret_value() if settings.vllm.api_key else None
    found: dict[str, set[str] | None] = {}
    for url in _replica_urls(settings):
        try:
            data = JsonClient(url, key).call("GET", "/v1/models", timeout=5)
        except (HttpError, Unreachable):
            found[replica_name(url)] = None
            continue
        models = data.get("data", []) if isinstance(data, dict) else []
        found[replica_name(url)] = {str(m["id"]) for m in models if isinstance(m, dict) and "id" in m}
    return found


@adapters_app.command("status")
def adapters_status(
    config: ConfigOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the gateway's JSON answer instead of a table.")
    ] = False,
    gateway: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The gateway to ask (default: server.host:server.port of the configuration); its admin API key "
            "in TURNOUT_API_KEY when it has keys.",
        ),
    ] = None,
) -> None:
    """The running gateway's view of its vLLM replicas: health, requests in flight, and per adapter resident,
    loading or failed (with vLLM's reason), from its GET /admin/adapters.

    Exit status: 0 when every replica is healthy and no adapter failed to load; 1 when one is ejected or
    draining, an adapter failed on a replica, or the gateway cannot be asked; 2 when the configuration
    cannot be used.
    """
    settings = load_or_exit(config)
    url = gateway or f"http://{settings.server.host}:{settings.server.port}"
    try:
        state = JsonClient(url, os.environ.get("TURNOUT_API_KEY")).call("GET", "/admin/adapters", timeout=10)
    except HttpError as exc:
        raise fail(f"the gateway at {url} answered {exc.status}: {exc.message}") from None
    except Unreachable as exc:
        raise fail(f"cannot reach the gateway at {exc}") from None
    replicas = state.get("replicas", []) if isinstance(state, dict) else []
    if as_json:
        typer.echo(json.dumps(state))
    else:
        typer.echo(f"{'REPLICA':<24} {'HEALTH':<9} {'IN FLIGHT':>9}  ADAPTERS")
        for replica in replicas:
            shown = [_adapter_state(row) for row in replica["adapters"] if row["state"] != "absent"]
            typer.echo(
                f"{replica['replica']:<24} {replica['health']:<9} {replica['in_flight']:>9}  {' '.join(shown) or '-'}"
            )
            for row in replica["adapters"]:
                if row["failed"] is not None:
                    reason, retry = row["failed"]["reason"], row["failed"]["retry_in_s"]
                    typer.echo(f"    {row['name']}: {reason} (retried in {retry:g} s)")
        if not replicas:
            typer.echo(f"(no replica: {state.get('replica_source', '')})")
    troubled = [r["replica"] for r in replicas if r["health"] != "healthy"]
    failed = [f"{row['name']}@{r['replica']}" for r in replicas for row in r["adapters"] if row["state"] == "failed"]
    if troubled or failed or not replicas:
        said = [f"not healthy: {', '.join(troubled)}"] if troubled else []
        said += [f"failed to load: {', '.join(failed)}"] if failed else []
        raise fail("; ".join(said) or "the gateway knows no replica", NOT_AS_DECLARED)


def _adapter_state(row: dict[str, Any]) -> str:
    return f"{row['name']}={row['state']}"
