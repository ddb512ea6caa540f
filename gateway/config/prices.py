"""The price of each OpenAI model the configuration names: ``costs.openai.models``, else the map litellm ships.

Resolving prices is part of checking a configuration (a policy that names a model with no price is
refused at start-up and on reload, naming the key), so it lives with the configuration; the per-request
arithmetic is :class:`gateway.accounting.prices.PriceBook`'s. The map is read from litellm's own copy
of its file: neither the network nor litellm's slow import is needed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.config.model import CostsConfig, TokenPriceConfig

PER_MILLION = 1e-6
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
        return cls(config.input * PER_MILLION, config.output * PER_MILLION, cached * PER_MILLION)


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


__all__ = ["PER_MILLION", "PriceError", "TokenPrice", "litellm_price_map", "openai_price"]
