"""What every ``turnout`` command shares: how a group of commands is made, reading the configuration, failing
with a message and an exit status, and one small HTTP client for the servers a command talks to (the
gateway, vLLM).

Help is typer's plain formatter (``rich_markup_mode=None``): typer's rich panels print a ``<bool>`` type
beside every flag (``--help`` included) and read ``[...]`` in help texts as markup, while the plain
formatter prints flags bare and text as written, and reads the same in a pipe or a log.

The client is the standard library's: a command makes a handful of calls and exits, so there is no
session to pool and no reason to load aiohttp's machinery for it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gateway.config import ConfigError, TurnoutConfig, load_config
from gateway.config.evidence import ShadowsConfig

T = TypeVar("T")

if TYPE_CHECKING:
    from gateway.evidence.stores import Evidence

ConfigOption = Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="The YAML configuration file.")]

# Exit statuses a script can tell apart (the README's Command line section lists them per command).
USAGE = 2  # the command cannot run as asked: invalid configuration, unknown collection, unreadable input


def group(help: str) -> typer.Typer:
    """A group of commands, all with the same settings (see the module docstring for the formatter)."""
    return typer.Typer(
        help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``turnout: message`` on stderr; raise the result to exit with ``code``."""
    typer.echo(f"turnout: {message}", err=True)
    return typer.Exit(code)


SinceOption = Annotated[str, typer.Option(metavar="SPAN", help="How far back: 30m, 24h, 7d.")]


def read_evidence(
    shadows: ShadowsConfig, since: str, read: Callable[[Evidence, float], T], path: Path | None = None
) -> T | None:
    """``read(store, cutoff)`` on the shadow evidence ``shadows`` names (or the SQLite file ``path``), for the
    ``since`` span up to now; None when nothing was ever recorded. Exits 2 when ``since`` is not a span or
    the store cannot be opened."""
    from gateway.evidence.report import parse_since
    from gateway.evidence.stores import has_evidence, open_evidence

    try:
        span = parse_since(since)
    except ValueError as exc:
        raise fail(str(exc), USAGE) from None
    if not (path.is_file() if path is not None else has_evidence(shadows)):
        return None
    try:
        store = open_evidence(shadows, path)
    except Exception as exc:  # psycopg's own errors: the database cannot be reached
        raise fail(f"the evidence store cannot be opened: {exc}", USAGE) from None
    try:
        return read(store, time.time() - span)
    finally:
        store.close()


def load_or_exit(path: Path) -> TurnoutConfig:
    """The validated configuration, or exit 2 with one line per problem."""
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"turnout: invalid configuration ({len(exc.problems)} problem(s)):", err=True)
        for line in exc.problems:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(USAGE) from None


class HttpError(Exception):
    """A server answered with an error status; ``message`` is its own (from the OpenAI envelope)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """Nothing answered at the address (refused, timed out, not HTTP)."""


class JsonClient:
    """A few JSON calls to one HTTP server, with a bearer key when one is given."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, payload: Any = None, *, timeout: float = 600) -> Any:
        """The decoded JSON answer; :class:`HttpError` on an error status, :class:`Unreachable` otherwise."""
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.key:
            request.add_header("authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = str(exc.reason)
            raise HttpError(exc.code, message) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unreachable(f"{self.url}: {exc}") from None

    def alive(self, path: str = "/health") -> bool:
        """Whether the server answers ``path`` with a 2xx."""
        try:
            self.call("GET", path, timeout=2)
        except (HttpError, Unreachable):
            return False
        return True


__all__ = [
    "USAGE",
    "ConfigOption",
    "HttpError",
    "JsonClient",
    "SinceOption",
    "Unreachable",
    "fail",
    "group",
    "load_or_exit",
    "read_evidence",
]
