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

from gateway.config.model import CostsConfig
from gateway.config.prices import PER_MILLION, TokenPrice, litellm_price_map, openai_price


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
        self.vllm_prompt_seconds_per_token = 1.0 / vllm.prompt_tokens_per_second  # replica time a prompt token takes
        prices = litellm_price_map() if set(openai_models) - set(costs.openai.models) else {}
        self.openai = {model: openai_price(model, costs, prices) for model in openai_models}
        self.embedding_per_token = costs.rag.embedding_usd_per_1m_tokens * PER_MILLION
        self.search_per_query = costs.rag.search_usd_per_query
        self.self_hosted_priced = vllm.gpu_hour_usd > 0

    def generation(self, openai_model: str | None, prompt: int, completion: int, cached: int = 0) -> float:
        """Dollars for generating: on OpenAI when ``openai_model`` is given, else on the vLLM replicas."""
        price = self.vllm if openai_model is None else self.openai[openai_model]
        return price.cost(prompt, completion, cached)


__all__ = ["PriceBook"]
