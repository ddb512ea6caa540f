"""One pooled aiohttp client per OpenAI-compatible upstream.

aiohttp rather than httpx on the hot path: measured on these machines, httpx's AsyncClient held
88-172 requests/s at concurrency 32 where aiohttp held ~1,600 (see the README's benchmark notes).
The session is created in the app's lifespan and closed on shutdown. What aiohttp's exceptions and the
server's statuses mean is decided in :mod:`gateway.failures`.

May import: ``gateway.errors``, ``gateway.failures``, ``gateway.protocol``.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.errors import TurnoutError
from gateway.failures import Boundary, for_status, translate
from gateway.protocol.envelope import error_message, is_route_miss

_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str
    api_key: str | None
    connect_timeout_s: float
    read_timeout_s: float
    name: str = "vllm"


class UpstreamResponse:
    """A successful (2xx) upstream answer whose body has not been read yet; release it when done."""

    __slots__ = ("_broken", "_response")

    def __init__(self, response: aiohttp.ClientResponse, broken: Callable[[str], None] | None = None) -> None:
        self._response = response
        self._broken = broken

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translate(exc, Boundary.READ, "the upstream") from exc
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unchanged (SSE bytes are passed through, not re-parsed). A server that
        breaks the stream off is told to the upstream's watcher before the error goes on."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self._broken is not None:
                self._broken(f"the stream broke off ({type(exc).__name__})")
            raise

    def close(self) -> None:
        """Drop the connection: the upstream sees the client go away and stops generating."""
        self._response.close()


class Upstream:
    """An OpenAI-compatible HTTP server reached through one pooled session. ``broken`` (when given) hears of
    every stream of this server that breaks off after its first byte, with the reason."""

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        broken: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._session = session
        self._broken = broken
        self._headers = {"content-type": "application/json"}
        if settings.api_key:
            self._headers["authorization"] = f"Bearer {settings.api_key}"
        self._urls: dict[str, URL] = {}  # parsed once per path, not on every request
        self._prefix = secrets.token_hex(3)
        self._serial = itertools.count(1)
        self._subject = f"{settings.name} at {settings.url}"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )

    @property
    def url(self) -> str:
        return self.settings.url

    async def open(self, path: str, body: bytes, *, model: str, request_id: str | None = None) -> UpstreamResponse:
        """POST ``body`` to ``path``; return the open response on 2xx, raise the mapped error otherwise.

        ``request_id`` travels as ``x-request-id`` with a unique suffix, so the upstream's logs name the
        same request while a client that reuses its ids never makes two upstream requests share one."""
        if request_id is None:
            headers = self._headers
        else:
            headers = {**self._headers, "x-request-id": f"{request_id}-{self._prefix}{next(self._serial):x}"}
        response = await self._send("POST", path, body, self._timeout, headers)
        if response.status < 300:
            return UpstreamResponse(response, self._broken)
        raise await self._error_from(response, model, path)

    async def request(
        self, method: str, path: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """A small control-plane call (models list, adapter load): status and whole body."""
        body = orjson.dumps(payload) if payload is not None else None
        timeout = self._timeout
        if timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self.settings.connect_timeout_s)
        response = await self._send(method, path, body, timeout, self._headers)
        try:
            return response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translate(exc, Boundary.READ, f"{self.settings.name} ({path})") from exc
        finally:
            response.release()

    async def _send(
        self, method: str, path: str, body: bytes | None, limits: aiohttp.ClientTimeout, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.settings.url + path)
        # One retry for a pooled connection the server closed while idle (a restarted server): nothing
        # reached the server on the failed attempt, so sending again cannot duplicate work.
        for attempt in (1, 2):
            try:
                return await self._session.request(method, url, data=body, headers=headers, timeout=limits)
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 2:
                    raise translate(exc, Boundary.SEND, self._subject) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise translate(exc, Boundary.SEND, self._subject) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _error_from(self, response: aiohttp.ClientResponse, model: str, path: str) -> TurnoutError:
        try:
            raw = await asyncio.wait_for(response.content.read(_MAX_ERROR_BODY), self.settings.read_timeout_s)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            response.release()
        message, param = error_message(raw)
        status = response.status
        no_such_path = status in (404, 405) and is_route_miss(raw)
        return for_status(
            status, message, param, subject=self.settings.name, model=model, path=path, no_such_path=no_such_path
        )
