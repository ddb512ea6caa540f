"""A recording reverse proxy in front of the real vLLM server.

Tests use it to observe exactly which control calls (adapter loads, unloads) the gateway makes,
while every request still reaches the real server and every answer comes back unchanged.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class Call:
    method: str
    path: str
    body: Any
    response: bytearray = field(default_factory=bytearray)  # the bytes the server answered, as forwarded


@dataclass
class RecordingProxy:
    target: str
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def loads(self, name: str | None = None) -> list[Call]:
        return self._matching("/v1/load_lora_adapter", name)

    def unloads(self, name: str | None = None) -> list[Call]:
        return self._matching("/v1/unload_lora_adapter", name)

    def _matching(self, path: str, name: str | None) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c.path == path and (name is None or (isinstance(c.body, dict) and c.body.get("lora_name") == name))
            ]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("recording proxy did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        session: aiohttp.ClientSession | None = None

        async def handle(request: web.Request) -> web.StreamResponse:
            assert session is not None
            raw = await request.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            call = Call(request.method, request.path, body)
            with self._lock:
                self.calls.append(call)
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
            async with session.request(
                request.method, self.target + request.path_qs, data=raw or None, headers=headers
            ) as upstream:
                response = web.StreamResponse(status=upstream.status)
                response.content_type = upstream.content_type
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    call.response += chunk
                    await response.write(chunk)
                await response.write_eof()
                return response

        async def start() -> None:
            nonlocal session
            session = aiohttp.ClientSession()
            app = web.Application(handler_args={"max_field_size": 65536}, client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", handle)
            self._runner = web.AppRunner(app, handler_cancellation=True)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
        loop.run_until_complete(session.close())  # type: ignore[union-attr]
        loop.close()
