"""Everything the gateway builds at start-up, built in one place and closed in reverse order.

The FastAPI lifespan calls :func:`build_components`; routers reach the result through the typed
accessors in :mod:`gateway.api.deps`. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp

from gateway.adapters.manager import AdapterManager, ManagerSettings
from gateway.adapters.validation import BaseModelFacts
from gateway.config import TurnoutConfig
from gateway.dispatch.backend import VllmBackend
from gateway.dispatch.service import CompletionService
from gateway.errors import TurnoutError
from gateway.upstream.client import Upstream, UpstreamSettings
from routing import RoutingTable, Target, TargetKind

log = logging.getLogger("turnout")

# vLLM's uvicorn closes idle keep-alive connections after 5 s; closing ours sooner avoids reusing one
# the server is about to drop.
_KEEPALIVE_S = 4.0


@dataclass(frozen=True, slots=True)
class Components:
    config: TurnoutConfig
    upstream: Upstream
    adapters: AdapterManager
    service: CompletionService
    table: RoutingTable
    started_at: int


def base_model_facts(config: TurnoutConfig) -> BaseModelFacts:
    names = {config.vllm.model, config.base_model_name, *config.base_model.aliases}
    return BaseModelFacts.from_config(names, config.base_model.path)


def routing_table(config: TurnoutConfig) -> RoutingTable:
    models = {config.base_model_name: Target(TargetKind.BASE, config.vllm.model)}
    models.update({name: Target(TargetKind.ADAPTER, name) for name in config.adapters})
    return RoutingTable.of(models)


async def build_components(config: TurnoutConfig, stack: AsyncExitStack) -> Components:
    vllm = config.vllm
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S, ttl_dns_cache=300)
    session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=connector, auto_decompress=False, raise_for_status=False)
    )
    upstream = Upstream(
        UpstreamSettings(
            url=vllm.url,
            api_key=vllm.api_key.get_secret_value() if vllm.api_key else None,
            connect_timeout_s=vllm.connect_timeout_s,
            read_timeout_s=vllm.read_timeout_s,
        ),
        session,
    )
    adapters = AdapterManager(
        upstream,
        config.adapters,
        ManagerSettings(
            max_rank=vllm.max_lora_rank,
            max_resident=vllm.max_resident,
            load_timeout_s=vllm.adapter_load_timeout_s,
            capacity_wait_s=vllm.capacity_wait_s,
            base=base_model_facts(config),
        ),
    )
    try:
        await adapters.sync()
    except TurnoutError as exc:
        # Not fatal: vLLM may start after the gateway; residency is learnt on first use then.
        log.warning("could not read vLLM's adapters at start-up: %s", exc.message)
    table = routing_table(config)
    backend = VllmBackend(upstream, adapters)
    service = CompletionService(table, {TargetKind.BASE: backend, TargetKind.ADAPTER: backend})
    return Components(config, upstream, adapters, service, table, started_at=int(time.time()))
