"""The OpenAI wire protocol as the gateway speaks it: request shapes, SSE framing, usage figures.

Everything here describes bytes and JSON, never where they come from or go to, so every layer can use
it: the HTTP layer (``gateway.api``), the completion service and its backends (``gateway.dispatch``) and
the accounting (``gateway.accounting``).

May import: ``gateway.errors`` only (and pydantic, orjson). Nothing of the gateway's other packages.
"""
