"""Serving adapter versions from the adapter store: a served name resolves to the version its store name points
at (or a fixed one); moving the name sends new requests to the new version while those in flight finish on the
old one, which is then unloaded (``eviction: gateway``) or left to vLLM's LRU (``eviction: vllm``); going back
reuses what is still loaded. In-process against fault-injecting upstreams as vLLM replicas."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.served import ServedAdapters, resolve, unresolved_reason
from gateway.adapters.store import AdapterStore
from gateway.config.model import AdapterConfig, AdapterStoreConfig
from tests.support.faulty_upstream import FaultyUpstream
from tests.support.inprocess import CHAT, chat_body, gateway_config, serve_gateway, write_adapter
from tests.unit.fleet_support import FAST_HEALTH, NO_PROBES, name_of, replicas, until_admin

VERSION = "x-turnout-adapter-version"
WATCH = {"watch_interval_s": 0.02}


def _two_versions(tmp_path: Path, name: str) -> tuple[AdapterStore, str, str]:
    """A store holding two versions of ``name`` (different files), the first one active."""
    store = AdapterStore(tmp_path / "store")
    first = write_adapter(tmp_path / "v1")
    second = write_adapter(tmp_path / "v2")
    (second / "README.md").write_text("retrained")
    v1, _ = store.push(name, first)
    v2, _ = store.push(name, second)
    store.activate(name, v1)
    return store, v1, v2


def _holds_only(upstream: FaultyUpstream, lora: str) -> bool:
    return bool(upstream.loaded == {lora})


def _version_of(state: dict[str, Any], name: str) -> str | None:
    return next((a["version"] for a in state["adapters"] if a["name"] == name), None)


# -- resolving ------------------------------------------------------------------------------------


def test_a_store_adapter_resolves_to_its_names_version_or_a_fixed_one(tmp_path: Path) -> None:
    store, v1, v2 = _two_versions(tmp_path, "formal")
    settings = AdapterStoreConfig(path=store.root)
    declared = {
        "formal": AdapterConfig(store="formal"),
        "formal-next": AdapterConfig(store="formal", version=v2),
        "plain": AdapterConfig(path=tmp_path / "v1"),
    }
    served = resolve(declared, settings)
    assert served["formal"].path == store.path_of("formal", v1)
    assert served["formal"].vllm_name("formal") == f"formal@{v1}"
    assert served["formal-next"].vllm_name("formal-next") == f"formal@{v2}"
    assert served["plain"] == declared["plain"]
    assert served["plain"].vllm_name("plain") == "plain"

    seen_by_vllm = resolve(declared, AdapterStoreConfig(path=store.root, served_path="/adapters/"))
    assert seen_by_vllm["formal"].served_path == f"/adapters/formal@{v1}"


def test_a_name_with_nothing_active_is_not_served_and_says_how_to_fix_it(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    served = resolve({"formal": AdapterConfig(store="formal")}, AdapterStoreConfig(path=store.root))
    assert served["formal"].path is None
    assert "has no active version yet (turnout adapters push formal DIR)" in unresolved_reason(
        "formal", served["formal"]
    )
    absent = resolve(
        {"old": AdapterConfig(store="formal", version="sha256-000000000000")}, AdapterStoreConfig(path=store.root)
    )
    assert absent["old"].path is None
    assert "version sha256-000000000000 of 'formal', which is not in" in unresolved_reason("old", absent["old"])


def test_a_damaged_pointer_or_a_version_not_arrived_keeps_the_version_being_served(tmp_path: Path) -> None:
    store, v1, v2 = _two_versions(tmp_path, "formal")
    watched = ServedAdapters({"formal": AdapterConfig(store="formal")}, AdapterStoreConfig(path=store.root))
    assert watched.watched()
    assert watched.refresh() is None  # nothing moved
    (store.root / ".aliases" / "formal.json").write_text("{not json")
    assert watched.refresh() is None
    assert watched.current["formal"].version == v1
    (store.root / ".aliases" / "formal.json").write_text(json.dumps({"current": "sha256-0123456789ab"}))
    assert watched.refresh() is None  # a version not arrived yet
    assert watched.current["formal"].version == v1
    (store.root / ".aliases" / "formal.json").write_text(json.dumps({"current": v2, "history": [v1]}))
    moved = watched.refresh()
    assert moved is not None
    assert moved["formal"].version == v2


# -- moving a name while serving ------------------------------------------------------------------


@pytest.mark.parametrize("eviction", ["gateway", "vllm"])
async def test_moving_a_name_serves_the_new_version_and_drains_the_old(tmp_path: Path, eviction: str) -> None:
    # "slow-" adapters: the upstream holds their streams after the first events until the test releases them
    store, v1, v2 = _two_versions(tmp_path, "slow-formal")
    old, new = f"slow-formal@{v1}", f"slow-formal@{v2}"
    async with replicas(1) as [upstream]:
        config = gateway_config(
            upstream.url,
            tmp_path,
            options={"slow-formal": {"store": "slow-formal"}},
            adapter_store={"path": str(store.root), **WATCH},
            vllm={"eviction": eviction, "health": NO_PROBES},
        )
        async with serve_gateway(config) as gateway:
            async with gateway.http.stream("POST", CHAT, json=chat_body("slow-formal", stream=True)) as held:
                assert held.status_code == 200
                assert held.headers[VERSION] == v1
                assert [s.model for s in upstream.seen()] == [old]  # sent under the version's own vLLM name
                assert upstream.load_paths[old] == str(store.path_of("slow-formal", v1))

                store.activate("slow-formal", v2)
                await until_admin(gateway, lambda s: _version_of(s, "slow-formal") == v2, "the name to move")
                upstream.release(new)
                moved = await gateway.http.post(CHAT, json=chat_body("slow-formal"))
                assert moved.status_code == 200, moved.text
                assert moved.headers[VERSION] == v2
                listed = {m["id"]: m["turnout"] for m in (await gateway.http.get("/v1/models")).json()["data"]}
                assert listed["slow-formal"]["version"] == v2
                assert upstream.loaded == {old, new}  # the old one still serves the stream in flight
                assert old not in upstream.unloads

                upstream.release(old)
                text = "".join([line async for line in held.aiter_lines()])
            assert "[DONE]" in text  # the request in flight finished on its version
            assert '"error"' not in text

            if eviction == "gateway":
                await upstream.until(lambda: upstream.loaded == {new}, "the old version to be unloaded")
                assert upstream.unloads == [old]
            else:  # several gateways may still use it: vLLM's own LRU drops it once nothing asks for it
                assert upstream.unloads == []

            store.rollback("slow-formal")
            await until_admin(gateway, lambda s: _version_of(s, "slow-formal") == v1, "the rollback")
            back = await gateway.http.post(CHAT, json=chat_body("slow-formal"))
            assert back.status_code == 200
            assert back.headers[VERSION] == v1
            expected_loads = [old, new, old] if eviction == "gateway" else [old, new]  # still loaded: reused
            assert upstream.loads == expected_loads


async def test_a_pinned_adapters_new_version_is_loaded_on_every_replica_without_a_request(tmp_path: Path) -> None:
    store, v1, v2 = _two_versions(tmp_path, "formal")
    async with replicas(2) as upstreams:
        config = gateway_config(
            [u.url for u in upstreams],
            tmp_path,
            options={"formal": {"store": "formal", "pinned": True}},
            adapter_store={"path": str(store.root), **WATCH},
            vllm={"health": FAST_HEALTH},
        )
        async with serve_gateway(config):
            for version in (v1, v2):
                if version == v2:
                    store.activate("formal", v2)
                for upstream in upstreams:
                    await upstream.until(partial(_holds_only, upstream, f"formal@{version}"), name_of(upstream))
            assert all(u.seen() == [] for u in upstreams)


async def test_a_name_pushed_after_start_is_served_once_it_is_activated(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    async with replicas(1) as [upstream]:
        config = gateway_config(
            upstream.url,
            tmp_path,
            options={
                "formal": {"store": "formal"},
                "formal-next": {"store": "formal", "version": "sha256-0123456789ab"},
            },
            adapter_store={"path": str(store.root), **WATCH},
            vllm={"health": NO_PROBES},
        )
        async with serve_gateway(config) as gateway:
            refused = await gateway.http.post(CHAT, json=chat_body("formal"))
            assert refused.status_code == 400
            error = refused.json()["error"]
            assert error["code"] == "invalid_adapter"
            assert "has no active version yet (turnout adapters push formal DIR)" in error["message"]
            absent = await gateway.http.post(CHAT, json=chat_body("formal-next"))
            assert absent.status_code == 400
            assert "version sha256-0123456789ab of 'formal', which is not in" in absent.json()["error"]["message"]
            assert upstream.loads == []

            version, _ = store.push("formal", write_adapter(tmp_path / "v1"))
            store.activate("formal", version)
            await until_admin(gateway, lambda s: _version_of(s, "formal") == version, "the first version")
            served = await gateway.http.post(CHAT, json=chat_body("formal"))
            assert served.status_code == 200, served.text
            assert served.headers[VERSION] == version
            assert upstream.loads == [f"formal@{version}"]


def test_the_offline_listing_names_each_version_and_what_is_missing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.support.inprocess import nowhere

    _, v1, _ = _two_versions(tmp_path, "formal")
    config = tmp_path / "turnout.yaml"
    config.write_text(
        json.dumps(
            {
                "vllm": {"url": nowhere(), "model": "house-base", "max_lora_rank": 8},
                "adapter_store": {"path": "store"},
                "adapters": {"formal": {"store": "formal"}, "other": {"store": "other"}},
            }
        )
    )
    result = CliRunner().invoke(app, ["adapters", "list", "--config", str(config), "--json"])
    assert result.exit_code == 1, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["adapters"]}
    assert rows["formal"]["vllm_name"] == f"formal@{v1}"
    assert rows["formal"]["problem"] == ""
    assert "has no active version yet" in rows["other"]["problem"]


@pytest.mark.parametrize(
    ("adapter", "problem"),
    [
        ({"store": "formal"}, "adapters.formal.store: adapters served from the store need adapter_store.path"),
        ({"path": "x", "store": "formal"}, "adapters.formal: give exactly one of path (a directory) and store"),
        ({"path": "x", "version": "sha256-0123456789ab"}, "adapters.formal: version names a version in the adapter"),
        ({"store": "formal", "version": "v2"}, "adapters.formal.version: 'v2' is not a store version"),
        ({"store": "formal", "served_path": "/x"}, "adapters.formal: served_path is for a path"),
    ],
)
def test_store_adapters_are_checked_with_the_configuration(
    tmp_path: Path, adapter: dict[str, Any], problem: str
) -> None:
    from gateway.config import ConfigError, load_config

    config = tmp_path / "turnout.yaml"
    config.write_text(json.dumps({"vllm": {"model": "m"}, "adapters": {"formal": adapter}}))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
