"""Turnout: an OpenAI-compatible gateway routing each request to an adapter, RAG or an OpenAI fine-tune."""

__version__ = "0.1.0"
