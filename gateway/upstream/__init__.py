"""HTTP upstreams the gateway forwards to (vLLM and other OpenAI-compatible servers).

May import: ``gateway.errors``, ``gateway.failures``, ``gateway.protocol``.
"""
