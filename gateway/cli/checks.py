"""``turnout config`` and ``turnout adapters``: is the configuration usable, and where are the adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import ConfigOption, HttpError, JsonClient, Unreachable, group, load_or_exit
from gateway.config import TurnoutConfig

config_app = group("Check the configuration file and print its schema.")
adapters_app = group("LoRA adapters: declared, valid, resident.")
INVALID_ADAPTER = 1


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
        f"{file}: OK: base model {settings.base_model_name!r} on {settings.vllm.url}, "
        f"{len(settings.adapters)} adapter(s)"
    )


@adapters_app.command("list")
def adapters_list(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The declared adapters: whether each is valid, and whether vLLM holds it now.

    Residency is asked of vLLM (vllm.url); when it does not answer, it is shown as unknown.

    Exit status: 0 when every adapter is valid, 1 when one is not (the table, or the JSON, says which
    and why), 2 when the configuration cannot be used.
    """
    settings = load_or_exit(config)
    resident = _resident_on_vllm(settings)
    rows = _adapter_rows(settings, resident)
    invalid = [row["name"] for row in rows if row["problem"]]
    if as_json:
        typer.echo(json.dumps({"vllm": settings.vllm.url, "reachable": resident is not None, "adapters": rows}))
    else:
        if resident is None:
            typer.echo(f"(vLLM at {settings.vllm.url} does not answer: residency unknown)", err=True)
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
    key = settings.vllm.api_key.get_secret_value() if settings.vllm.api_key else None
    try:
        data = JsonClient(settings.vllm.url, key).call("GET", "/v1/models", timeout=5)
    except (HttpError, Unreachable):
        return None
    models = data.get("data", []) if isinstance(data, dict) else []
    return {str(m["id"]) for m in models if isinstance(m, dict) and "id" in m}
