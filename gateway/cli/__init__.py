"""The ``turnout`` command: serve, check and explain configuration, inspect adapters, manage retrieval.

Each group of commands lives in its own module and is assembled here; the modules import
:mod:`gateway.cli.common`, never this package, so the command line has no import circle.

May import: anything in the gateway (this is the top of the import graph).
"""

from __future__ import annotations

import typer

from gateway.cli import checks, rag, route, serve

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Turnout: serve, check and explain the configuration, inspect adapters, manage retrieval.",
)
app.command()(serve.serve)
app.add_typer(checks.config_app, name="config")
app.add_typer(checks.adapters_app, name="adapters")
app.add_typer(route.app, name="route")
app.add_typer(rag.app, name="rag")


def main() -> None:
    app()


__all__ = ["app", "main"]
