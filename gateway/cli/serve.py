"""``turnout serve``: the OpenAI-compatible API under uvicorn (uvloop and httptools, no access log), each
connection bounded by :mod:`gateway.api.edge`."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from gateway.cli.common import ConfigOption, load_or_exit


def serve(
    config: ConfigOption,
    host: Annotated[
        str | None, typer.Option(metavar="HOST", help="Listen on this address instead of server.host.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(metavar="PORT", help="Listen on this port instead of server.port.")
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API until stopped.

    SIGHUP, or POST /admin/reload, reads the configuration file again; an invalid file changes nothing.
    Ctrl-C or SIGTERM stops the gateway after the requests in flight (10 s at most).

    Exit status: 0 after a stop; 2 when the configuration cannot be used; 3 when the gateway cannot
    start (a component fails to start, such as a vector store open in another process, or the port is
    taken).
    """
    import functools

    import uvicorn

    from gateway.api.edge import Edge, EdgeLimits, EdgeProtocol
    from gateway.app import create_asgi_app

    settings = load_or_exit(config)
    server = settings.server
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = EdgeLimits(
        max_url_bytes=server.max_url_bytes,
        max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        max_connections=server.max_connections,
    )
    uvicorn.run(
        create_asgi_app(settings, config),
        host=host or server.host,
        port=port or server.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=functools.partial(EdgeProtocol, edge=Edge(limits)),  # type: ignore[arg-type]  # uvicorn builds it so
        timeout_keep_alive=server.keep_alive_s,  # type: ignore[arg-type]  # typed int, used as seconds
        log_level=server.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
