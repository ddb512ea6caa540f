"""``turnout adapters push | versions | activate | rollback``: adapter versions in the adapter store.

A push validates the adapter with the same checks the gateway makes before loading one, then stores it
as an immutable version named by its content (``NAME@sha256-...``), and by default points the served
name at it. Nothing half-written is ever left where a replica could read it (see
:mod:`gateway.adapters.store`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gateway.adapters.store import AdapterStore, Alias, StoreError, version_name
from gateway.cli.common import USAGE, ConfigOption, fail, load_or_exit
from gateway.config import TurnoutConfig

FAILED = 1

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The adapter's served name (what clients call).")]


def _store(settings: TurnoutConfig) -> AdapterStore:
    root = settings.adapter_store.path
    if root is None:
        raise fail("adapter_store.path is not set in the configuration: there is no store to use", USAGE)
    root.mkdir(parents=True, exist_ok=True)
    return AdapterStore(root)


def push(
    name: NameArg,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The adapter: adapter_config.json and weights.")],
    config: ConfigOption,
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Point NAME at the new version (default: yes).")
    ] = True,
) -> None:
    """Validate an adapter and store it as a new immutable version of NAME.

    The version is named by the adapter's content (NAME@sha256-...): pushing the same files again stores
    nothing new. The copy is checked against the source before it appears in the store, so a replica never
    sees half an adapter. With --activate (the default) NAME then points at it; the version it pointed at
    before is kept for `turnout adapters rollback`.

    Exit status: 0 when stored (or already there); 1 when the adapter is invalid (the message says why)
    or the copy failed; 2 when the configuration cannot be used or has no adapter_store.path.
    """
    from gateway.adapters.validation import validate_adapter
    from gateway.components import base_model_facts
    from gateway.errors import InvalidAdapter

    settings = load_or_exit(config)
    store = _store(settings)
    try:
        validate_adapter(name, directory, max_rank=settings.vllm.max_lora_rank, base=base_model_facts(settings))
        version, new = store.push(name, directory)
        if activate:
            store.activate(name, version)
    except InvalidAdapter as exc:
        raise fail(f"not stored: {exc.message}", FAILED) from None
    except (StoreError, OSError) as exc:
        raise fail(f"not stored: {exc}", FAILED) from None
    stored = "stored" if new else "already stored"
    pointed = f"; {name} now points at it" if activate else ""
    typer.echo(f"{version_name(name, version)} {stored} in {store.root}{pointed}")


def versions(
    name: NameArg,
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """The versions of NAME in the adapter store, oldest first, the current one marked with *.

    Exit status: 0; 1 when NAME has no version; 2 when the configuration cannot be used."""
    store = _store(load_or_exit(config))
    try:
        alias = store.alias(name)
    except StoreError as exc:
        raise fail(str(exc), FAILED) from None
    found = store.versions(name)
    if not found:
        raise fail(f"adapter {name!r} has no version in the store {store.root}", FAILED)
    current = alias.current if alias is not None else None
    if as_json:
        typer.echo(json.dumps({"name": name, "current": current, "versions": found}))
        return
    for version in found:
        typer.echo(f"{'*' if version == current else ' '} {name}@{version}")


def activate_version(
    name: NameArg,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="A stored version: sha256-... (see versions).")],
    config: ConfigOption,
) -> None:
    """Point NAME at a stored VERSION (the one it pointed at goes to the history).

    Exit status: 0; 1 when there is no such version; 2 when the configuration cannot be used."""
    _move(name, config, lambda store: store.activate(name, version.removeprefix(f"{name}@")))


def rollback(name: NameArg, config: ConfigOption) -> None:
    """Point NAME back at the version it pointed at before the current one.

    Exit status: 0; 1 when there is no earlier version; 2 when the configuration cannot be used."""
    _move(name, config, lambda store: store.rollback(name))


def _move(name: str, config: Path, move: Callable[[AdapterStore], Alias]) -> None:
    store = _store(load_or_exit(config))
    try:
        alias = move(store)
    except StoreError as exc:
        raise fail(str(exc), FAILED) from None
    typer.echo(f"{name} now points at {name}@{alias.current}")


def register(adapters: typer.Typer) -> None:
    """Add these commands to the ``turnout adapters`` group."""
    adapters.command("push")(push)
    adapters.command("versions")(versions)
    adapters.command("activate")(activate_version)
    adapters.command("rollback")(rollback)


__all__ = ["activate_version", "push", "register", "rollback", "versions"]
