#!/usr/bin/env bash
# Ensure the Python environment that runs LiteLLM proxy for the overhead benchmark.
#
# LiteLLM proxy is measured as a separate program, so it gets its own venv, never the gateway's. As
# deploy/local/vllm-env.sh does for vLLM, one venv per pinned requirement list is kept under
# ${TURNOUT_CACHE:-$HOME/.cache/turnout}, named after a short hash of that list: changing the pin builds
# a fresh venv, repeated runs are a fast no-op. A marker written as the very last step says the venv is
# complete; a directory without it (an interrupted build) is deleted and built again. Concurrent callers
# are serialised with a lock file beside the venv.
#
# Progress goes to stderr; the last line on stdout is the venv's `litellm` executable. Exits non-zero
# when the venv cannot be built (no registry, for example): the benchmark then reports LiteLLM as not
# measured and goes on.
#
# Environment: TURNOUT_CACHE (cache root), TURNOUT_PYTHON (interpreter that creates the venv, default
# python3).
set -euo pipefail

# Plain pip resolves litellm[proxy] to 1.106.2 on these machines (notes/gateway-overhead.md); pinned so
# figures compare from run to run.
REQUIREMENTS="litellm[proxy]==1.106.2"

log() { printf '[litellm-env] %s\n' "$*" >&2; }

# Every step checks its own status: the caller runs this in an `if`, where `set -e` does not apply.
build_venv() {
    local venv="$1" spec="$2" python_bin="$3"
    local start=$SECONDS
    log "creating $venv (a minute or two the first time)"
    "$python_bin" -m venv "$venv" || return 1
    # pip warns once per package about index locations of the machine's configuration that do not exist
    "$venv/bin/python" -m pip --disable-pip-version-check install -q "$REQUIREMENTS" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) >&2 || return 1
    LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --help >/dev/null || return 1
    printf '%s\n' "$spec" >"$venv/.turnout-complete" || return 1
    log "venv ready in $((SECONDS - start)) s"
}

main() {
    local cache python_bin py_tag spec key venv
    cache="${TURNOUT_CACHE:-$HOME/.cache/turnout}"
    python_bin="${TURNOUT_PYTHON:-python3}"

    py_tag="$("$python_bin" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
    spec="$(printf '%s\n%s' "$py_tag" "$REQUIREMENTS")"
    key="$(printf '%s\n' "$spec" | sha256sum | cut -c1-12)"
    venv="$cache/litellm-proxy-venv-$key"

    mkdir -p "$cache"
    exec 9>"$cache/.litellm-proxy-venv-$key.lock"
    flock 9
    if [[ ! -f "$venv/.turnout-complete" ]]; then
        if [[ -e "$venv" ]]; then
            log "removing incomplete venv $venv"
            rm -rf "$venv"
        fi
        if ! build_venv "$venv" "$spec" "$python_bin"; then
            rm -rf "$venv"
            log "could not build the venv"
            exit 1
        fi
    fi
    exec 9>&-
    echo "$venv/bin/litellm"
}

main "$@"
