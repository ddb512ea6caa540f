"""The ``turnout`` command: serve, check and explain configuration, inspect adapters, manage retrieval.

Each group of commands lives in its own module and is assembled here; the modules import
:mod:`gateway.cli.common`, never this package, so the command line has no import circle.

May import: anything in the gateway (this is the top of the import graph).
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway import __version__
from gateway.cli import checks, finetune, plan, rag, report, route, serve, store, training
from gateway.cli.common import group

app = group(
    """Turnout, an OpenAI-compatible gateway: serve it, check its configuration and adapters, explain its
    routing, manage its retrieval collections.

    Exit status: 0 when the command did what it was asked, 1 when it ran and something failed (an invalid
    adapter, a document that could not be ingested, nothing to delete), 2 when it could not run as asked
    (an invalid configuration, an unknown collection, a wrong option). Each command's help says more.
    """
)
app.command()(serve.serve)
app.add_typer(checks.config_app, name="config")
store.register(checks.adapters_app)
training.register(checks.adapters_app)
app.add_typer(checks.adapters_app, name="adapters")
app.add_typer(route.app, name="route")
app.add_typer(finetune.app, name="finetune")
app.command("plan")(plan.plan_command)
app.command("report")(report.report_command)
app.add_typer(rag.app, name="rag")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"turnout {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Options read before any command."""


def main() -> None:
    app()


__all__ = ["app", "main"]
