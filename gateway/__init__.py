"""Turnout: an OpenAI-compatible gateway routing each request to an adapter, RAG or an OpenAI fine-tune.

The packages are layered, and imports point down only (``tests/unit/test_layers.py`` checks it)::

    cli                      the ``turnout`` command
    api, app                 HTTP: the FastAPI app, its routes, the request pipeline, responses
    components               building, reloading and closing everything, in the lifespan
    dispatch                 the completion service and its backends (vLLM, RAG, OpenAI): plain results
    accounting, adapters, embeddings, rag, upstream, auth, routing_state   capabilities
    protocol                 OpenAI request shapes, SSE framing, usage figures
    errors, failures, config, metrics   the error tree and its one table, configuration, metrics
    routing                  the pure policy engine (a package of its own)

May import: this module itself imports nothing.
"""

__version__ = "0.1.0"
