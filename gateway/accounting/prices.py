"""What a request costs in US dollars, by route.

- **OpenAI targets** are priced per token from the price map litellm ships (read from its file, so
  neither the network nor litellm's slow import is needed), including fine-tunes (``ft:<base>:...`` takes
  the ``ft:<base>`` price, else the base model's) and cached prompt tokens; ``costs.openai.models``
  overrides or completes it.
- **Self-hosted vLLM targets** (base model, adapters, RAG generators) are apportioned GPU time: a
  request is charged the share of a replica's time its tokens take at the replica's measured
  throughput::

      dollars = gpu_hour_usd * gpus_per_replica / 3600
                * (prompt_tokens / prompt_tokens_per_second + completion_tokens / completion_tokens_per_second)

  So a replica that runs at its configured throughput all hour is charged exactly its hourly price,
  whatever mix of requests it served, and the figure is the same under any load (unlike wall-clock
  shares, which would make a request dearer when the server is busy).
- **Retrieval** adds the query embedding (per token) and the vector search (per query).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.config.model import CostsConfig, TokenPriceConfig

_PER_MILLION = 1e-6
_PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """US dollars per token."""

    input: float
    output: float
    cached_input: float

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        cached = min(max(cached, 0), prompt)
        return (prompt - cached) * self.input + cached * self.cached_input + completion * self.output

    @classmethod
    def per_million(cls, config: TokenPriceConfig) -> TokenPrice:
        cached = config.cached_input if config.cached_input is not None else config.input
        return cls(config.input * _PER_MILLION, config.output * _PER_MILLION, cached * _PER_MILLION)


class PriceError(ValueError):
    """An OpenAI model has no price: neither in litellm's map nor in ``costs.openai.models``."""


def litellm_price_map() -> dict[str, Any]:
    """litellm's own copy of its price map (about 10 ms to read: done at start-up and on reload only)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / _PRICE_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_map(entry: Any) -> TokenPrice | None:
    if not isinstance(entry, dict):
        return None
    try:
        prompt = float(entry["input_cost_per_token"])
        completion = float(entry["output_cost_per_token"])
    except (KeyError, TypeError, ValueError):
        return None
    cached = entry.get("cache_read_input_token_cost")
    return TokenPrice(prompt, completion, float(cached) if isinstance(cached, int | float) else prompt)


def openai_price(model: str, costs: CostsConfig, prices: dict[str, Any]) -> TokenPrice:
    """The price of ``model``: the configured override, else ``prices`` (litellm's map); else :class:`PriceError`."""
    override = costs.openai.models.get(model)
    if override is not None:
        return TokenPrice.per_million(override)
    candidates = [model, f"openai/{model}"]
    if model.startswith("ft:"):
        base = model.split(":")[1]
        candidates += [f"ft:{base}", base]
    for name in candidates:
        price = _from_map(prices.get(name))
        if price is not None:
            return price
    raise PriceError(
        f"no price for OpenAI model {model!r} in litellm's price map; add it under costs.openai.models "
        "(dollars per million input and output tokens)"
    )


class PriceBook:
    """Every price the gateway needs, resolved at start-up (and on reload) so a request only multiplies."""

    def __init__(self, costs: CostsConfig, openai_models: list[str]) -> None:
        vllm = costs.vllm
        per_second = vllm.gpu_hour_usd * vllm.gpus_per_replica / 3600.0
        self.vllm = TokenPrice(
            per_second / vllm.prompt_tokens_per_second,
            per_second / vllm.completion_tokens_per_second,
            per_second / vllm.prompt_tokens_per_second,
        )
        prices = litellm_price_map() if set(openai_models) - set(costs.openai.models) else {}
        self.openai = {model: openai_price(model, costs, prices) for model in openai_models}
        self.embedding_per_token = costs.rag.embedding_usd_per_1m_tokens * _PER_MILLION
        self.search_per_query = costs.rag.search_usd_per_query
        self.self_hosted_priced = vllm.gpu_hour_usd > 0

    def generation(self, openai_model: str | None, prompt: int, completion: int, cached: int = 0) -> float:
        """Dollars for generating: on OpenAI when ``openai_model`` is given, else on the vLLM replicas."""
        price = self.vllm if openai_model is None else self.openai[openai_model]
        return price.cost(prompt, completion, cached)


__all__ = ["PriceBook", "PriceError", "TokenPrice", "litellm_price_map", "openai_price"]
