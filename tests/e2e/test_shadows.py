"""Shadow arms end to end with real vLLM adapters: the client's answers are what they are without shadows,
every arm's figures are recorded in the evidence store (and the metrics), and a full queue drops shadows
and counts them instead of making anyone wait."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import localstack
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.support.postgres_server import PostgresServer
from tests.support.stack import BASE, gateway_config
from tests.support.waiting import until

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write one line about the sea."}]
SHADOWED = ["adapter:terse", "base"]


def _config(vllm_url: str, assets: Path, store: Path, **shadows: Any) -> dict[str, Any]:
    config = gateway_config(vllm_url, assets)
    config["policies"] = {
        "bot": {
            "rules": [{"name": "all", "target": "adapter:formal", "shadow": {"targets": SHADOWED, "sample": 1.0}}],
            "default": "base",
        }
    }
    config["shadows"] = {"store": str(store), **shadows}
    return config


def _rows(store: Path) -> list[dict[str, Any]]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute("SELECT * FROM arms ORDER BY at, rowid")]
        except sqlite3.OperationalError:  # the gateway is creating the table this very moment
            return []


def _answer(client: openai.OpenAI, stream: bool) -> tuple[str, str | None, Any]:
    if not stream:
        done = client.chat.completions.create(model="bot", messages=PROMPT, max_tokens=12, temperature=0)
        return done.choices[0].message.content or "", done.choices[0].finish_reason, done.usage
    text, reason, usage = "", None, None
    for chunk in client.chat.completions.create(
        model="bot", messages=PROMPT, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        usage = chunk.usage or usage
    return text, reason, usage


def test_shadows_record_every_arm_and_leave_the_answer_alone(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    store = tmp_path / "evidence.sqlite"
    shadowed = start_gateway(_config(vllm.url, assets, store))
    plain_config = _config(vllm.url, assets, tmp_path / "unused.sqlite")
    plain_config["policies"]["bot"]["rules"][0].pop("shadow")
    plain = start_gateway(plain_config)
    answers = {}
    for name, gateway in (("shadowed", shadowed), ("plain", plain)):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        answers[name] = [_answer(client, stream) for stream in (False, True)]
    assert answers["shadowed"] == answers["plain"]  # text, finish reason and usage, whole and streamed
    assert not (tmp_path / "unused.sqlite").exists()  # no shadows, no store

    until(lambda: len(_rows(store)) == 6, lambda: None, lambda: f"rows: {_rows(store)}")
    rows = _rows(store)
    assert [(r["arm"], r["primary"]) for r in rows] == [
        ("adapter:formal", 1), ("adapter:terse", 0), (f"base:{BASE}", 0),
    ] * 2  # fmt: skip
    for row in rows:
        assert (row["policy"], row["rule"], row["status"]) == ("bot", "all", 200)
        assert row["seconds"] > 0
        assert row["prompt_tokens"] > 0
        assert row["completion_tokens"] > 0
        assert row["usd"] > 0  # the stack prices self-hosted routes
        assert row["request_text"] is None  # shadows.keep_texts is off
        if row["primary"]:
            assert row["agreement"] is None
        else:
            assert -1.0 <= row["agreement"] <= 1.0
    assert rows[3]["ttft_seconds"] is not None  # the streamed request's primary: time to first token
    assert all(row["ttft_seconds"] is not None for row in rows[3:])
    samples = localstack.scrape_metrics(shadowed.url)
    assert localstack.metric_total(samples, "turnout_shadow_requests_total", arm="adapter:terse", outcome="ok") == 2
    assert localstack.metric_total(samples, "turnout_shadow_agreement_count", arm="adapter:terse") == 2
    assert localstack.metric_total(samples, "turnout_shadow_cost_dollars_total", arm=f"base:{BASE}") > 0
    # the routes' own metrics count the two client requests only, not their shadows
    assert localstack.metric_total(samples, "turnout_requests_total", policy="bot") == 2

    # the report says what the rows say, on the running gateway and offline
    served = httpx.get(shadowed.url + "/admin/report", params={"since": "1h"}, timeout=30).json()
    [group] = served["groups"]
    assert (group["policy"], group["group"]) == ("bot", "rule all")
    by_arm = {arm["arm"]: arm for arm in group["arms"]}
    for name in ("adapter:formal", "adapter:terse", f"base:{BASE}"):
        mine = [r for r in rows if r["arm"] == name]
        assert by_arm[name]["requests"] == len(mine) == 2
        assert by_arm[name]["usd_per_1000_requests"] == pytest.approx(1000 * sum(r["usd"] for r in mine) / 2, rel=1e-4)
    assert group["recommendation"] == "2 requests so far: 20 are needed for a recommendation"
    offline = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "-c", str(shadowed.config_path), "--since", "1h", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["groups"] == served["groups"]
    page = httpx.get(shadowed.url + "/admin/report", params={"since": "1h", "format": "html"}, timeout=30)
    assert page.headers["content-type"].startswith("text/html")
    assert "<h2>bot: rule all</h2>" in page.text
    assert page.text.count("<svg") == 3
    refused = httpx.get(shadowed.url + "/admin/report", params={"since": "yesterday"}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "since"

    # replaying the recorded requests: the same policy changes nothing, a moved rule moves both
    def replayed(config_file: Path) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "route", "replay", "-c", str(config_file), "--since", "1h", "--json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    same = replayed(shadowed.config_path)
    assert (same["requests"], same["changed"]) == (2, 0)
    candidate = yaml.safe_load(shadowed.config_path.read_text())
    candidate["policies"]["bot"]["rules"][0]["target"] = "adapter:pirate"
    moved_file = tmp_path / "candidate.yaml"
    moved_file.write_text(yaml.safe_dump(candidate))
    moved = replayed(moved_file)
    assert moved["changed"] == 2
    [move] = moved["moves"]
    assert (move["from"]["target"], move["to"]["target"]) == ("adapter:formal", "adapter:pirate")


def test_a_full_queue_drops_shadows_and_counts_them(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    store = tmp_path / "evidence.sqlite"
    gateway = start_gateway(_config(vllm.url, assets, store, queue_size=1, workers=1))

    async def burst() -> None:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120
        ) as client:
            await asyncio.gather(
                *(client.chat.completions.create(model="bot", messages=PROMPT, max_tokens=12) for _ in range(8))
            )

    asyncio.run(burst())

    def dropped() -> float:
        found = localstack.metric_total(localstack.scrape_metrics(gateway.url), "turnout_shadow_dropped_total")
        return float(found)

    assert dropped() >= 1
    recorded = {row["request_id"] for row in _rows(store)}
    until(
        lambda: len({r["request_id"] for r in _rows(store)}) + dropped() == 8, lambda: None, lambda: str(_rows(store))
    )
    assert len(recorded) < 8


def test_two_gateways_share_one_postgresql_evidence_store(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    with PostgresServer() as postgres:
        config = _config(vllm.url, assets, tmp_path / "unused.sqlite", database_url=postgres.url)
        gateways = [start_gateway(config), start_gateway(config)]
        for gateway in gateways:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            _answer(client, stream=False)
        config_file = gateways[0].config_path

        def reported() -> dict[str, Any]:
            done = subprocess.run(
                [sys.executable, "-m", "gateway", "report", "-c", str(config_file), "--since", "1h", "--json"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return dict(json.loads(done.stdout))

        def arms() -> dict[str, int]:
            groups = reported()["groups"]
            return {arm["arm"]: arm["requests"] for group in groups for arm in group["arms"]}

        until(lambda: arms().get(f"base:{BASE}") == 2, lambda: None, lambda: str(reported()))
        assert arms() == {"adapter:formal": 2, "adapter:terse": 2, f"base:{BASE}": 2}  # one request from each gateway
        assert not (tmp_path / "unused.sqlite").exists()
        served = httpx.get(gateways[1].url + "/admin/report", params={"since": "1h"}, timeout=30).json()
        assert served["groups"] == reported()["groups"]
        replayed = subprocess.run(
            [sys.executable, "-m", "gateway", "route", "replay", "-c", str(config_file), "--since", "1h", "--json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        assert (json.loads(replayed.stdout)["requests"], json.loads(replayed.stdout)["changed"]) == (2, 0)
        for gateway in gateways:
            gateway.stop()  # before the database goes


def test_a_rag_arm_records_its_citations_and_best_score(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    store = tmp_path / "evidence.sqlite"
    config = _config(vllm.url, assets, store)
    config["rag"] = {
        "store": {"path": str(tmp_path / "qdrant")},
        "collections": {"kb": {"top_k": 2, "score_threshold": 0.2}},
    }
    config["policies"]["bot"]["rules"][0]["shadow"] = {"targets": ["rag:kb+adapter:formal"], "sample": 1.0}
    gateway = start_gateway(config)
    document = {"id": "sea", "title": "The sea", "text": "The sea is wide and salty; waves roll onto the shore."}
    added = httpx.post(gateway.url + "/v1/rag/collections/kb/documents", json={"documents": [document]}, timeout=120)
    assert added.status_code == 200, added.text
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    _answer(client, stream=False)
    until(lambda: len(_rows(store)) == 2, lambda: None, lambda: str(_rows(store)))
    primary, rag = _rows(store)
    assert (primary["arm"], rag["arm"]) == ("adapter:formal", "rag:kb+adapter:formal")
    assert rag["status"] == 200
    assert rag["citations"] >= 1
    assert 0.2 <= rag["best_score"] <= 1.0
    assert rag["prompt_tokens"] > primary["prompt_tokens"]  # the retrieved context was in its prompt
    assert -1.0 <= rag["agreement"] <= 1.0


def test_shadow_calls_count_against_the_callers_quota(
    vllm: Any, assets: Path, start_gateway: Any, tmp_path: Path
) -> None:
    store = tmp_path / "evidence.sqlite"
    config = _config(vllm.url, assets, store)
    config["auth"] = {"keys": [{"key": "sk-quota", "quota": {"requests_per_minute": 2}}]}
    gateway = start_gateway(config)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-quota", max_retries=0, timeout=120)
    _answer(client, stream=False)  # the request is the first of two a minute; its first arm the second

    def quota() -> float:
        samples = localstack.scrape_metrics(gateway.url)
        return localstack.metric_total(samples, "turnout_shadow_requests_total", outcome="quota")

    until(lambda: quota() == 1, lambda: None, lambda: str(_rows(store)))
    until(lambda: len(_rows(store)) == 2, lambda: None, lambda: str(_rows(store)))
    assert [row["arm"] for row in _rows(store)] == ["adapter:formal", "adapter:terse"]  # the second arm: refused
