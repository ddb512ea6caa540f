"""LoRA adapters on vLLM: checked before loading, loaded on first use, evicted least-recently-used."""
