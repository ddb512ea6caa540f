"""What a library's exception, or an upstream's HTTP status, means in the gateway's error tree: one table.

The gateway calls out at a few boundaries: an OpenAI-compatible server over aiohttp (vLLM), OpenAI
through litellm, a stream that breaks off after its first byte (either of them), and retrieval (the
Qdrant client and the embedding model). Each boundary's rules are read in order, like ``except``
clauses: the first rule naming a class the exception is an instance of decides (so aiohttp's
``SocketTimeoutError``, both a ``ClientError`` and a ``TimeoutError``, is a timeout because that rule
comes first). Callers raise the result ``from`` the original exception, so the cause stays in the logs
while the client sees a bounded message.

Classes are named by their top-level package and name (``aiohttp.ClientError``, ``litellm.Timeout``,
``builtins.TimeoutError``), never imported here: litellm and the Qdrant client load only where they
are configured, and this table must not be what loads them.

May import: ``gateway.errors`` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from gateway.errors import (
    RetrievalUnavailable,
    TurnoutError,
    UnsupportedEndpoint,
    UpstreamError,
    UpstreamModelMissing,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)


class Boundary(Enum):
    SEND = "send"  # sending a request to an OpenAI-compatible server (aiohttp): connecting, waiting for headers
    READ = "read"  # reading the body of its answer
    STREAM = "stream"  # a stream that breaks off after its first byte, from any backend
    OPENAI = "openai"  # a call through litellm
    RETRIEVAL = "retrieval"  # the vector store or the embedding model


@dataclass(frozen=True, slots=True)
class _Rule:
    make: Callable[[str, BaseException], TurnoutError]
    template: str  # {subject}: who was called; {cls}: the exception's class; {detail}: its message, bounded
    when: Callable[[BaseException], bool] | None = None


def _rejected(message: str, exc: BaseException) -> TurnoutError:
    return UpstreamRejected(message, status=int(getattr(exc, "status_code", 400) or 400))


def _plain(kind: type[TurnoutError]) -> Callable[[str, BaseException], TurnoutError]:
    return lambda message, _: kind(message)


def _says_connection_error(exc: BaseException) -> bool:
    # litellm reports a refused connection as an InternalServerError saying "Connection error."
    return "Connection error" in _detail(exc)


_NO_SUCH_PATH = re.compile(r'\{"detail":\s*"Not Found"\}')


def _says_no_such_path(exc: BaseException) -> bool:
    # litellm relays the server's body: FastAPI's own 404 for a path it does not serve
    return _NO_SUCH_PATH.search(_detail(exc)) is not None


_UNAVAILABLE, _TIMEOUT, _ERROR = _plain(UpstreamUnavailable), _plain(UpstreamTimeout), _plain(UpstreamError)
_OPENAI_UNAVAILABLE = _Rule(_UNAVAILABLE, "OpenAI is unreachable or overloaded: {detail}")

_RULES: dict[Boundary, dict[str, _Rule | tuple[_Rule, ...]]] = {
    Boundary.SEND: {
        "aiohttp.ServerDisconnectedError": _Rule(_UNAVAILABLE, "{subject} closed the connection"),
        "aiohttp.ClientConnectorError": _Rule(_UNAVAILABLE, "cannot connect to {subject}"),
        "aiohttp.ConnectionTimeoutError": _Rule(_UNAVAILABLE, "cannot connect to {subject}"),
        # the connection was reset before an answer came (a server going down): it cannot be reached
        "aiohttp.ClientOSError": _Rule(_UNAVAILABLE, "{subject} reset the connection ({detail})"),
        "builtins.TimeoutError": _Rule(_TIMEOUT, "{subject} did not answer in time"),
        "aiohttp.ClientError": _Rule(_ERROR, "{subject} request failed: {cls}"),
    },
    Boundary.READ: {
        "builtins.TimeoutError": _Rule(_TIMEOUT, "{subject} stopped answering before the response was complete"),
        "aiohttp.ClientError": _Rule(_ERROR, "{subject} broke off the response: {cls}"),
    },
    Boundary.STREAM: {
        "builtins.TimeoutError": _Rule(_TIMEOUT, "{subject} went silent mid-stream"),
        "builtins.Exception": _Rule(_ERROR, "{subject} broke off the stream ({cls})"),
    },
    Boundary.OPENAI: {
        "litellm.Timeout": _Rule(_TIMEOUT, "OpenAI did not answer in time: {detail}"),
        "litellm.InternalServerError": _Rule(
            _UNAVAILABLE, "OpenAI is unreachable or overloaded: {detail}", when=_says_connection_error
        ),
        "litellm.APIConnectionError": _OPENAI_UNAVAILABLE,
        "litellm.ServiceUnavailableError": _OPENAI_UNAVAILABLE,
        "litellm.RateLimitError": _OPENAI_UNAVAILABLE,
        "litellm.NotFoundError": (  # tried in order
            _Rule(_plain(UnsupportedEndpoint), "openai.api_base has no such endpoint", when=_says_no_such_path),
            _Rule(_plain(UpstreamModelMissing), "OpenAI does not serve model {subject}: {detail}"),
        ),
        "litellm.AuthenticationError": _Rule(_ERROR, "OpenAI refused the gateway's key: {detail}"),
        "litellm.PermissionDeniedError": _Rule(_ERROR, "OpenAI refused the gateway's key: {detail}"),
        "litellm.BadRequestError": _Rule(_rejected, "{detail}"),
        "litellm.UnprocessableEntityError": _Rule(_rejected, "{detail}"),
        "builtins.Exception": _Rule(_ERROR, "OpenAI request failed: {cls}: {detail}"),
    },
    Boundary.RETRIEVAL: {
        # the store's and the model's many failure kinds all mean one thing: retrieval is down right now
        "builtins.Exception": _Rule(_plain(RetrievalUnavailable), "{subject} failed ({cls}: {detail})"),
    },
}


def _key(cls: type) -> str:
    return f"{cls.__module__.partition('.')[0]}.{cls.__name__}"


def _detail(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)[:500]


def translate(exc: BaseException, boundary: Boundary, subject: str) -> TurnoutError:
    """The gateway's error for ``exc`` raised at ``boundary`` while calling ``subject``.

    A :class:`TurnoutError` is already one and is returned as it is. Callers pass only what their library
    raises; an exception no rule of the boundary names becomes the 500 ``internal_error`` a bug gets."""
    if isinstance(exc, TurnoutError):
        return exc
    classes = {_key(cls) for cls in type(exc).__mro__}
    for name, rules in _RULES[boundary].items():
        if name not in classes:
            continue
        for rule in rules if isinstance(rules, tuple) else (rules,):
            if rule.when is None or rule.when(exc):
                message = rule.template.format(subject=subject, cls=type(exc).__name__, detail=_detail(exc))
                return rule.make(message, exc)
    return TurnoutError(f"{subject}: unexpected {type(exc).__name__}")


def for_status(
    status: int,
    message: str,
    param: str | None,
    *,
    subject: str,
    model: str,
    path: str = "",
    no_such_path: bool = False,
) -> TurnoutError:
    """The gateway's error for an OpenAI-compatible server's non-2xx answer (its own ``message``).

    ``no_such_path``: the body was the web framework's own 404 or 405, not an OpenAI envelope. Then, like a
    501, the server does not serve ``path`` at all (an older vLLM without the Responses API): another target
    may, so it falls back, and the client is told which endpoint, never a server error."""
    if no_such_path or status == 501:
        return UnsupportedEndpoint(f"{subject} does not serve POST {path} (it answered {status}: {message})")
    if status in (401, 403):
        # the server refused the gateway's own credentials: not the client's fault, and another target may work
        return UpstreamError(f"{subject} refused the gateway's credentials ({status}); check vllm.api_key")
    if status == 404:
        return UpstreamModelMissing(f"{subject} does not serve model {model!r}: {message}")
    if status in (408, 504):
        return UpstreamTimeout(f"{subject} timed out: {message}")
    if 400 <= status < 500 and status != 429:
        return UpstreamRejected(message, status=status, param=param)
    if status in (429, 503):
        return UpstreamUnavailable(f"{subject} is overloaded ({status}): {message}")
    return UpstreamError(f"{subject} failed with status {status}: {message}")


__all__ = ["Boundary", "for_status", "translate"]
