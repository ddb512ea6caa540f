"""LoRA adapters on vLLM: checked before loading, loaded on first use, evicted least-recently-used.

May import: ``gateway.config``, ``gateway.errors``, ``gateway.metrics``, ``gateway.protocol``, ``gateway.upstream``.
"""
