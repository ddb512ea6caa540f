"""HTTP upstreams the gateway forwards to (vLLM and other OpenAI-compatible servers)."""
