"""The HTTP layer: the completion endpoints, thin FastAPI routers, the one request pipeline, the responses.

Routes parse, hand over to a service and render; they hold no logic of their own. Only this layer (and
``gateway.app`` and the command line above it) may import FastAPI, Starlette or uvicorn.

May import: every package of the gateway below it (``components``, ``dispatch`` and down); nothing imports it
but ``gateway.app`` and ``gateway.cli``.
"""
