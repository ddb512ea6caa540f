"""Semantic intents: example utterances per intent, and which intent a query's embedding carries.

The embeddings themselves are computed outside (the gateway owns the model); here they are only
compared: cosine similarity against every example, the best example per intent, and the intent with
the highest score among those that clear their own threshold. When none clears, the answer is an
explicit abstain, so a rule can route "nothing recognised" on purpose instead of by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class IntentMatch:
    intent: str | None  # None: abstain
    score: float  # the chosen intent's score, or the best score when abstaining
    scores: Mapping[str, float]


class IntentIndex:
    """Example embeddings of every intent, normalised once so a query costs one matrix product."""

    def __init__(self, examples: Mapping[str, Sequence[Sequence[float]]], thresholds: Mapping[str, float]) -> None:
        self.names = tuple(examples)
        if not self.names:
            raise ValueError("an intent index needs at least one intent")
        rows: list[npt.NDArray[np.float32]] = []
        starts: list[int] = []
        for name in self.names:
            vectors = np.asarray(examples[name], dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) == 0:
                raise ValueError(f"intent {name!r} needs at least one example embedding")
            starts.append(sum(len(r) for r in rows))
            rows.append(vectors)
        matrix = np.concatenate(rows)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = matrix / np.where(norms == 0, 1, norms)
        self.starts = np.asarray(starts)
        self.thresholds = np.asarray([thresholds[n] for n in self.names], dtype=np.float32)
        self.dimension = int(matrix.shape[1])

    def classify(self, embedding: Sequence[float] | None) -> IntentMatch:
        if embedding is None:
            raise ValueError("the request has no embedding, but its policy has an intent condition")
        query = np.asarray(embedding, dtype=np.float32)
        if query.shape != (self.dimension,):
            raise ValueError(f"query embedding has shape {query.shape}, intents were embedded with {self.dimension}")
        norm = float(np.linalg.norm(query))
        similarities = self.matrix @ (query / norm if norm else query)
        best = np.maximum.reduceat(similarities, self.starts)
        scores = {name: float(score) for name, score in zip(self.names, best, strict=True)}
        clearing = np.flatnonzero(best >= self.thresholds)
        if len(clearing) == 0:
            return IntentMatch(None, float(best.max()), scores)
        winner = int(clearing[np.argmax(best[clearing])])
        return IntentMatch(self.names[winner], float(best[winner]), scores)
