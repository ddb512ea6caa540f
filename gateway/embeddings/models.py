"""The embedding model behind :class:`~gateway.embeddings.Embedder`, run one of two ways.

* :class:`OnnxModel`: the model's ONNX export (:mod:`gateway.embeddings.export`) run by onnxruntime, with
  the model's own tokenizer (``tokenizers``) and mean pooling done here: 3.4 ms for a 19-token query on one
  core (4.7 exact), no torch in the process. The exact export's vectors are the sentence-transformers
  pipeline's (cosine 1 - 2e-7): padding goes to the batch's longest text, as there, not to the tokenizer
  file's fixed length.
* :class:`TorchModel`: sentence-transformers on torch, for models the export does not support (and as
  ``embeddings.backend: torch``).

:func:`load_model` picks one as ``embeddings.backend`` says: ``auto`` (the default) runs the ONNX export
when the model can be exported (building it on first use, in a child process) and torch otherwise;
``onnx`` and ``onnx-int8`` insist on the export; ``torch`` never exports. ``auto`` and ``onnx-int8`` run
the export's int8 variant (weights and activations in blocks of 32 values, each with its own scale: about 1.4
times faster than the exact export for one query, cosines above 0.998 with it, and the same routing decisions
and top hits on every test set); ``onnx`` runs the exact one.

May import: ``gateway.config``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.config.model import EmbeddingsConfig
from gateway.embeddings import export

log = logging.getLogger("turnout.embeddings")

Vector = list[float]


class ModelError(Exception):
    """The model cannot be loaded as asked."""


class EmbeddingModel(Protocol):
    backend: str  # "onnx", "onnx-int8" or "torch": what serves the requests
    dimension: int
    max_tokens: int  # the longest input the model reads; longer text is cut off

    def encode(self, texts: list[str]) -> list[Vector]: ...

    def token_counts(self, texts: Sequence[str], *, special: bool) -> list[int]:
        """Tokens of each text in the model's tokenizer, never cut off (on the model's thread)."""
        ...


class OnnxModel:
    def __init__(self, folder: Path, *, int8: bool, threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        manifest = export.read_manifest(folder)
        self.backend = "onnx-int8" if int8 else "onnx"
        self.max_tokens = int(manifest.get("max_tokens", 256))
        self._normalize = bool(manifest.get("normalize", True))
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_tokens)
        pad = self._tokenizer.padding or {}
        # to the batch's longest text (the file may pad every text to a fixed length)
        self._tokenizer.enable_padding(pad_id=int(pad.get("pad_id", 0)), pad_token=str(pad.get("pad_token", "[PAD]")))
        self._counter = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Threads that spin between runs are fastest on an idle machine and slowest when another process
        # holds a core (5-8 ms against 3.5 per query, measured): they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(folder / (export.INT8 if int8 else export.FP32)), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dimension = len(self.encode(["dimension"])[0])

    def encode(self, texts: list[str]) -> list[Vector]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self._normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return [list(map(float, row)) for row in pooled]

    def token_counts(self, texts: Sequence[str], *, special: bool) -> list[int]:
        return [len(e.ids) for e in self._counter.encode_batch(list(texts), add_special_tokens=special)]


class TorchModel:
    backend = "torch"

    def __init__(self, location: Path, batch_size: int) -> None:
        from sentence_transformers import SentenceTransformer

        self._model: Any = SentenceTransformer(str(location), device="cpu")
        self._batch_size = batch_size
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self.max_tokens = int(self._model.max_seq_length or 256)

    def encode(self, texts: list[str]) -> list[Vector]:
        vectors: Any = self._model.encode(
            texts, batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return [list(map(float, v)) for v in vectors]

    def token_counts(self, texts: Sequence[str], *, special: bool) -> list[int]:
        return [len(ids) for ids in self._model.tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as ``taskset`` or a container's cpuset sets it): more
    threads than that only contend (measured: 3.6 ms per query with two threads on one core, 3.2 with one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def load_model(config: EmbeddingsConfig, location: Path) -> EmbeddingModel:
    """The model at ``location`` run as ``config.backend`` says (blocking: call it in a thread)."""
    threads = config.threads or min(2, usable_cores())
    if config.backend != "torch":
        problem = export.supported(location)
        if not problem:
            root = config.export_dir or export.default_root()
            folder = export.location(location, root, Path(config.model).name)
            try:
                if not export.is_built(folder):
                    log.info("exporting the embedding model to ONNX in %s (once; about 10 s)", folder)
                    export.build_in_child(location, folder)
                return OnnxModel(folder, int8=config.backend != "onnx", threads=threads)
            except (export.ExportError, OSError, ImportError) as exc:
                problem = str(exc)
        if config.backend != "auto":
            raise ModelError(f"embeddings.backend is {config.backend} but the model cannot run so: {problem}")
        log.warning("the embedding model runs with torch (slower): %s", problem)
    import torch

    torch.set_num_threads(threads)
    return TorchModel(location, config.batch_size)


__all__ = ["EmbeddingModel", "ModelError", "OnnxModel", "TorchModel", "load_model"]
