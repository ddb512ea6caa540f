"""From a request to its answer: the completion service, the backends it drives (vLLM, RAG, OpenAI), and
the plain results it hands the HTTP layer (:mod:`.delivery`); the embeddings service (:mod:`.embeddings`).

May import: the capabilities (``accounting``, ``adapters``, ``embeddings``, ``rag``, ``upstream``), ``protocol``,
``errors``, ``failures``, ``config``, ``metrics`` and ``routing``. Never ``gateway.api``, Starlette or FastAPI:
nothing here knows it is answering HTTP.
"""
