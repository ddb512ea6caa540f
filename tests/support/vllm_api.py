"""Direct calls to the real vLLM server, to check what the gateway did to it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def _call(url: str, method: str = "GET", payload: Any = None) -> tuple[int, bytes]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def loaded_adapters(vllm_url: str) -> set[str]:
    """Names vLLM lists as LoRA adapters (entries with a parent model)."""
    status, body = _call(vllm_url + "/v1/models")
    assert status == 200, body
    return {m["id"] for m in json.loads(body)["data"] if m.get("parent")}


def unload_all(vllm_url: str) -> None:
    for name in loaded_adapters(vllm_url):
        status, body = _call(vllm_url + "/v1/unload_lora_adapter", "POST", {"lora_name": name})
        assert status == 200, body
