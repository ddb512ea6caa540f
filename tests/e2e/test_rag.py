"""RAG end to end: real embedded Qdrant storage, the real embedding model, real vLLM, the gateway process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.stack import BASE, gateway_config
from tests.support.vllm_api import loaded_adapters

KEYS = {"a": "key-tenant-a", "b": "key-tenant-b", "admin": "key-admin", "plain": "key-no-tenant"}
HARBOUR = "The Acme harbour office on Pier 4 opens at 7:30 and closes at 16:00 on weekdays."
WARRANTY = "Every Acme kettle carries a warranty of 39 months from the date of delivery."
SECRET = "Project Nightingale launches on the ninth of March; its budget is 4711 euros."
QUESTION_HARBOUR = "When does the harbour office open on weekdays?"
QUESTION_SECRET = "When does Project Nightingale launch and what is its budget?"


def rag_config(vllm_url: str, assets: Path, store: Path) -> dict[str, Any]:
    config = gateway_config(vllm_url, assets)
    config["auth"] = {
        "keys": [
            {"key": KEYS["a"], "tenant": "tenant-a"},
            {"key": KEYS["b"], "tenant": "tenant-b"},
            {"key": KEYS["admin"], "admin": True},
            {"key": KEYS["plain"]},
        ]
    }
    config["rag"] = {
        "store": {"path": str(store)},
        "chunking": {"max_tokens": 64, "overlap_tokens": 8},
        "collections": {
            "kb": {
                "description": "help centre",
                "top_k": 3,
                "score_threshold": 0.35,
                "refuse_message": "Nothing in the handbook covers that.",
            }
        },
    }
    strict = {"collection": "kb", "score_threshold": 0.99}

    def route(value: str) -> dict[str, Any]:
        return {"header": {"name": "x-route", "equals": value}}

    config["policies"] = {
        "kb-bot": {
            "rules": [
                {"name": "facts", "when": route("rag"), "target": "rag:kb"},
                {"name": "hybrid", "when": route("hybrid"), "target": "rag:kb+adapter:formal"},
                {"name": "gated-next", "when": route("next"), "target": {"rag": {**strict, "on_empty": "next_rule"}}},
                {"name": "after-gate", "when": route("next"), "target": "adapter:terse"},
                {"name": "gated-refuse", "when": route("refuse"), "target": {"rag": {**strict, "on_empty": "refuse"}}},
                {"name": "gated-answer", "when": route("answer"), "target": {"rag": {**strict, "on_empty": "answer"}}},
            ],
            "default": "rag:kb",
        }
    }
    return config


@pytest.fixture(scope="module")
def rag_gateway(vllm: Any, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("rag")
    process = GatewayProcess(rag_config(vllm.url, assets, workdir / "qdrant"), workdir, localstack.free_port())
    with process:
        yield process


def _api(gateway: GatewayProcess, who: str, method: str, path: str, payload: Any = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    return httpx.request(method, gateway.url + path, json=payload, headers=headers, timeout=300)


def _ingest(gateway: GatewayProcess, who: str, documents: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = _api(gateway, who, "POST", "/v1/rag/collections/kb/documents", {"documents": documents, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _client(gateway: GatewayProcess, who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[who], max_retries=0, timeout=120)


def _ask(
    gateway: GatewayProcess, who: str, question: str, route: str = "rag", **extra: Any
) -> tuple[dict[str, str], Any]:
    headers = {"x-route": route, **extra.pop("extra_headers", {})}
    raw = _client(gateway, who).chat.completions.with_raw_response.create(
        model="kb-bot",
        messages=[{"role": "user", "content": question}],
        max_tokens=8,
        temperature=0,
        extra_headers=headers,
        **extra,
    )
    return dict(raw.headers), raw.parse()


def _citations(response: Any) -> list[dict[str, Any]]:
    citations = (response.choices[0].message.model_extra or {}).get("citations")
    assert isinstance(citations, list), "the message carries a citations list"
    return citations


@pytest.fixture(scope="module")
def corpus(rag_gateway: GatewayProcess) -> GatewayProcess:
    shared = [
        {"id": "harbour", "title": "Harbour office", "text": HARBOUR, "url": "https://acme.example/harbour"},
        {"id": "warranty", "title": "Warranty", "text": WARRANTY},
    ]
    report = _ingest(rag_gateway, "admin", shared)
    assert sorted(report["added"]) == ["harbour", "warranty"]
    assert _ingest(rag_gateway, "b", [{"id": "nightingale", "title": "Nightingale", "text": SECRET}])["added"] == [
        "nightingale"
    ]
    return rag_gateway


def test_answers_cite_the_document_that_holds_the_answer(corpus: GatewayProcess) -> None:
    headers, response = _ask(corpus, "a", QUESTION_HARBOUR)
    assert headers["x-turnout-route"] == f"rag:kb+base:{BASE}"
    citations = _citations(response)
    assert citations[0]["document"] == "harbour"
    assert citations[0]["url"] == "https://acme.example/harbour"
    assert citations[0]["title"] == "Harbour office"
    assert "7:30" in citations[0]["snippet"]
    assert citations[0]["score"] >= 0.35
    assert headers["x-turnout-citations"] == str(len(citations))
    assert response.choices[0].message.content  # the generator answered


def test_reingest_unchanged_is_a_noop_and_changed_replaces(corpus: GatewayProcess) -> None:
    same = {"id": "warranty", "title": "Warranty", "text": WARRANTY}
    assert _ingest(corpus, "admin", [same])["skipped"] == ["warranty"]
    changed = {**same, "text": WARRANTY.replace("39 months", "41 months")}
    report = _ingest(corpus, "admin", [changed])
    assert report["replaced"] == ["warranty"]
    _, response = _ask(corpus, "a", "How long is the warranty on a kettle?")
    warranty = [c for c in _citations(response) if c["document"] == "warranty"]
    assert warranty
    assert "41 months" in warranty[0]["snippet"]
    assert all("39 months" not in c["snippet"] for c in _citations(response))


def test_delete_removes_every_chunk(corpus: GatewayProcess) -> None:
    long_text = " ".join(
        f"Tide table entry {i}: high water at {i % 12 + 1} o'clock at the lighthouse." for i in range(40)
    )
    report = _ingest(corpus, "admin", [{"id": "tides", "title": "Tides", "text": long_text}])
    assert report["chunks"] > 1
    listed = _api(corpus, "admin", "GET", "/v1/rag/collections/kb/documents").json()["data"]
    assert {"tides", "harbour"} <= {d["id"] for d in listed}
    _, response = _ask(corpus, "a", "When is high water at the lighthouse?")
    assert any(c["document"] == "tides" for c in _citations(response))
    assert _api(corpus, "admin", "DELETE", "/v1/rag/collections/kb/documents/tides").json()["deleted"] is True
    _, response = _ask(corpus, "a", "When is high water at the lighthouse?")
    assert all(c["document"] != "tides" for c in _citations(response))
    assert _api(corpus, "admin", "DELETE", "/v1/rag/collections/kb/documents/tides").status_code == 404


@pytest.mark.parametrize(
    "smuggle",
    [
        {},
        {"user": "tenant-b"},
        {"metadata": {"tenant": "tenant-b"}},
        {"extra_body": {"tenant": "tenant-b"}},
        {"extra_headers": {"x-route": "rag", "x-turnout-tenant": "tenant-b"}},
    ],
)
def test_one_tenant_never_retrieves_anothers_chunks(corpus: GatewayProcess, smuggle: dict[str, Any]) -> None:
    _, response = _ask(corpus, "a", QUESTION_SECRET, **smuggle)
    assert all(c["document"] != "nightingale" for c in _citations(response))
    assert all("Nightingale" not in c["snippet"] for c in _citations(response))


def test_the_owner_retrieves_its_chunks_and_others_cannot_touch_them(corpus: GatewayProcess) -> None:
    _, response = _ask(corpus, "b", QUESTION_SECRET)
    assert _citations(response)[0]["document"] == "nightingale"
    listed = _api(corpus, "a", "GET", "/v1/rag/collections/kb/documents").json()
    assert listed["tenant"] == "tenant-a"
    assert all(d["id"] != "nightingale" for d in listed["data"])
    denied = _api(corpus, "a", "GET", "/v1/rag/collections/kb/documents?tenant=tenant-b")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    assert _api(corpus, "a", "DELETE", "/v1/rag/collections/kb/documents/nightingale").status_code == 404
    # a key with no tenant reads the shared documents but may not change what every tenant retrieves
    plain = _api(corpus, "plain", "POST", "/v1/rag/collections/kb/documents", {"documents": [{"text": "poison"}]})
    assert plain.status_code == 403
    assert _api(corpus, "plain", "DELETE", "/v1/rag/collections/kb").status_code == 403
    assert _api(corpus, "plain", "DELETE", "/v1/rag/collections/kb/documents/harbour").status_code == 403
    assert "harbour" in {
        d["id"] for d in _api(corpus, "plain", "GET", "/v1/rag/collections/kb/documents").json()["data"]
    }
    unauthenticated = httpx.post(
        corpus.url + "/v1/chat/completions", json={"model": "kb-bot", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "invalid_api_key"


def _metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """A sample's value on the gateway's own /metrics (0 when the series does not exist yet)."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in httpx.get(gateway.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(f"{name}{{{selector}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gating_next_rule_refuse_and_answer(corpus: GatewayProcess) -> None:
    empty_before = _metric(corpus, "turnout_retrieval_empty_total", collection="kb")
    headers, response = _ask(corpus, "a", QUESTION_HARBOUR, route="next")
    assert headers["x-turnout-rule"] == "after-gate"
    assert headers["x-turnout-passed-rules"] == "gated-next"
    assert headers["x-turnout-route"] == "adapter:terse"

    headers, response = _ask(corpus, "a", QUESTION_HARBOUR, route="refuse")
    assert response.choices[0].message.content == "Nothing in the handbook covers that."
    assert _citations(response) == []
    assert headers["x-turnout-retrieval"] == "empty"

    headers, response = _ask(corpus, "a", QUESTION_HARBOUR, route="answer")
    assert headers["x-turnout-retrieval"] == "empty"
    assert headers["x-turnout-route"] == f"rag:kb+base:{BASE}"
    assert _citations(response) == []
    assert response.choices[0].message.content
    assert _metric(corpus, "turnout_retrieval_empty_total", collection="kb") == empty_before + 3


def test_streaming_citations_arrive_before_done(corpus: GatewayProcess) -> None:
    body = {
        "model": "kb-bot",
        "messages": [{"role": "user", "content": QUESTION_HARBOUR}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = httpx.post(
        corpus.url + "/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"authorization": f"Bearer {KEYS['a']}", "x-route": "rag"},
    )
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"] == []
    assert last["citations"][0]["document"] == "harbour"
    assert any(json.loads(e[6:]).get("usage") for e in events[:-1])
    # and the official client parses the same stream
    stream = _client(corpus, "a").chat.completions.create(
        model="kb-bot",
        messages=[{"role": "user", "content": QUESTION_HARBOUR}],
        max_tokens=6,
        stream=True,
        extra_headers={"x-route": "rag"},
    )
    chunks = list(stream)
    assert (chunks[-1].model_extra or {})["citations"][0]["document"] == "harbour"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_hybrid_answers_through_an_adapter_with_citations(corpus: GatewayProcess, vllm: Any) -> None:
    headers, response = _ask(corpus, "a", QUESTION_HARBOUR, route="hybrid")
    assert headers["x-turnout-route"] == "rag:kb+adapter:formal"
    assert _citations(response)[0]["document"] == "harbour"
    assert "formal" in loaded_adapters(vllm.url)
    _, plain = _ask(corpus, "a", QUESTION_HARBOUR, route="rag")
    assert response.choices[0].message.content != plain.choices[0].message.content


def test_store_failure_falls_back_or_answers_503(vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any) -> None:
    config = rag_config(vllm.url, assets, tmp_path / "unused")
    config["rag"]["store"] = {"url": f"http://127.0.0.1:{localstack.free_port()}"}  # a Qdrant server that is down
    config["policies"]["kb-bot"]["fallbacks"] = ["base"]
    config["policies"]["strict-bot"] = {"default": "rag:kb"}
    gateway = start_gateway(config)
    raw = _client(gateway, "a").chat.completions.with_raw_response.create(
        model="kb-bot",
        messages=[{"role": "user", "content": QUESTION_HARBOUR}],
        max_tokens=4,
        extra_headers={"x-route": "rag"},
    )
    assert raw.headers["x-turnout-route"] == f"base:{BASE}"
    assert raw.headers["x-turnout-degraded"] == "retrieval"
    assert raw.headers["x-turnout-fallback-from"] == "rag:kb+base:tiny-llama(retrieval)"
    with pytest.raises(openai.InternalServerError) as caught:
        _client(gateway, "a").chat.completions.create(
            model="strict-bot", messages=[{"role": "user", "content": QUESTION_HARBOUR}], max_tokens=4
        )
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "retrieval_unavailable"
    assert caught.value.response.headers["x-turnout-degraded"] == "retrieval"
    assert _metric(gateway, "turnout_retrieval_degraded_total", collection="kb") == 2


def _turnout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True)


def test_cli_ingests_offline_and_through_a_running_gateway(
    vllm: Any, assets: Path, tmp_path: Path, start_gateway: Any
) -> None:
    corpus_dir = Path(__file__).resolve().parents[2] / "examples" / "corpus"
    config = rag_config(vllm.url, assets, tmp_path / "qdrant")
    config["auth"] = {}
    config["server"] = {"port": localstack.free_port()}  # nobody listens there: the CLI works offline
    config_path = tmp_path / "turnout.yaml"
    config_path.write_text(json.dumps(config))

    first = _turnout("rag", "ingest", "kb", str(corpus_dir), "--config", str(config_path))
    assert first.returncode == 0, first.stderr
    assert "added 5, replaced 0, skipped 0, failed 0" in first.stdout
    again = _turnout("rag", "ingest", "kb", str(corpus_dir), "--config", str(config_path))
    assert "added 0, replaced 0, skipped 5, failed 0" in again.stdout
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine line"}\nnot json\n')
    partial = _turnout("rag", "ingest", "kb", str(broken), "--config", str(config_path))
    assert partial.returncode == 1
    assert "added 1," in partial.stdout
    assert "failed 1" in partial.stdout
    assert "line 2" in partial.stderr
    listed = [
        json.loads(line) for line in _turnout("rag", "list", "kb", "--config", str(config_path)).stdout.splitlines()
    ]
    assert {"shipping-eu", "shipping-world"} <= {row["id"] for row in listed}

    gateway = start_gateway(config)  # now the gateway owns the embedded store
    locked = _turnout("rag", "ingest", "kb", str(corpus_dir), "--config", str(config_path))
    assert locked.returncode == 1
    assert "open in another process" in locked.stderr
    assert "Traceback" not in locked.stderr
    through = _turnout("rag", "ingest", "kb", str(corpus_dir), "--config", str(config_path), "--gateway", gateway.url)
    assert through.returncode == 0, through.stderr
    assert "skipped 5" in through.stdout
    deleted = _turnout("rag", "delete", "kb", "shipping-eu", "--config", str(config_path), "--gateway", gateway.url)
    assert deleted.returncode == 0, deleted.stderr
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=120,
        headers={"x-route": "rag"},
        json={
            "model": "kb-bot",
            "messages": [{"role": "user", "content": "What does shipping outside the EU cost?"}],
            "max_tokens": 4,
        },
    )
    sources = {c["document"] for c in answer.json()["choices"][0]["message"]["citations"]}
    assert "shipping-world" in sources
    assert "shipping-eu" not in sources
