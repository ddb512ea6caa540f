#!/usr/bin/env bash
# Ensure the tiny model and its LoRA adapters exist, built by the vLLM venv.
#
# Assets are cached under ${TURNOUT_CACHE:-$HOME/.cache/turnout}, keyed by a
# short hash of build_tiny_model.py, so editing the builder gives a new build
# and an unchanged builder reuses the last one. The build itself writes into a
# temporary directory and renames it into place, so an interrupted build
# leaves nothing half-written. The repository's .turnout/assets is pointed at
# the result. Progress goes to stderr; the last line on stdout is the assets
# directory.
set -euo pipefail

main() {
    local here repo cache python key assets
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    repo="$(cd "$here/../.." && pwd)"
    cache="${TURNOUT_CACHE:-$HOME/.cache/turnout}"

    python="$(bash "$here/vllm-env.sh" | tail -n 1)"
    key="$(sha256sum "$here/build_tiny_model.py" | cut -c1-12)"
    assets="$cache/assets-$key"

    if [[ ! -f "$assets/.turnout-complete" ]]; then
        printf '[assets] building %s\n' "$assets" >&2
        "$python" "$here/build_tiny_model.py" --out "$assets" >/dev/null
    fi

    mkdir -p "$repo/.turnout"
    ln -sfn "$assets" "$repo/.turnout/assets"
    echo "$assets"
}

main "$@"
