"""The demo's walk-through from a training file to a served adapter: check the sample file, train a LoRA
adapter from it on the tiny model, and (once the gateway serves ``examples/demo.yaml``, which declares it
by path) ask it and the base model the same question. ``make demo`` runs it; the README shows it, and its
test runs the same steps before serving the demo's configuration.

The adapter is trained once into ``.turnout/trained/support-formal`` and reused while the sample file is
unchanged (its hash is recorded beside it). The training options suit a tiny model with random weights,
which needs a higher learning rate and more passes than the defaults (made for real base models) to learn
the sample's formal register within seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from localstack import REPO_ROOT

SAMPLE = "examples/finetune/support-formal.jsonl"
BASE = ".turnout/assets/model"
TRAINED = REPO_ROOT / ".turnout" / "trained" / "support-formal"
TRAIN_OPTIONS = [
    "--rank", "8", "--alpha", "32", "--learning-rate", "0.005", "--epochs", "20",
    "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
]  # fmt: skip
QUESTION = "Good morning, How much is shipping?"
SYSTEM = "You are the support desk of an online shop."


def _turnout(*args: str, quiet: bool = False) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL if quiet else None,
    )


def check_and_train(quiet: bool = False) -> Path:
    """``turnout finetune check`` the sample, then ``turnout adapters train`` it (unless trained already)."""
    _turnout("finetune", "check", SAMPLE, "--base", BASE, quiet=quiet)
    stamp = TRAINED.parent / "support-formal.sha256"
    digest = hashlib.sha256((REPO_ROOT / SAMPLE).read_bytes() + " ".join(TRAIN_OPTIONS).encode()).hexdigest()
    if (TRAINED / "adapter_config.json").is_file() and stamp.is_file() and stamp.read_text() == digest:
        return TRAINED
    if TRAINED.exists():
        shutil.rmtree(TRAINED)  # trained from another file or with other options
    _turnout("adapters", "train", SAMPLE, "--base", BASE, "--out", str(TRAINED), *TRAIN_OPTIONS, "--quiet", quiet=quiet)
    stamp.write_text(digest)
    return TRAINED


def ask(gateway_url: str, model: str) -> str:
    """The answer of ``model`` to the walk-through's question, through the gateway (greedy, 16 tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 16,
        "temperature": 0,
    }
    request = urllib.request.Request(
        gateway_url + "/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(json.load(response)["choices"][0]["message"]["content"])


__all__ = ["QUESTION", "SYSTEM", "TRAINED", "ask", "check_and_train"]
