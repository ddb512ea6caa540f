"""The fleet's configuration keys (the ones the Helm chart renders): where the replicas are, how they are
probed, the eviction mode, and each adapter's replica bounds; every problem named with its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config

HEADLESS = "turnout-vllm-tiny-llama.turnout.svc.cluster.local"


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_keys_as_the_chart_renders_them(tmp_path: Path) -> None:
    (tmp_path / "formal").mkdir()
    (tmp_path / "terse").mkdir()
    config = load_config(
        _write(
            tmp_path,
            {
                "vllm": {
                    "model": "tiny-llama",
                    "discovery": {"dns": HEADLESS, "port": 8000, "scheme": "http", "interval_s": 10},
                    "health": {"interval_s": 5, "timeout_s": 2, "eject_after": 3},
                    "eviction": "vllm",
                },
                "adapters": {
                    "formal": {"path": "formal", "pinned": True},
                    "terse": {"path": "terse", "min_replicas": 1, "max_replicas": 2},
                },
            },
        )
    )
    assert config.vllm.discovery is not None
    assert (config.vllm.discovery.dns, config.vllm.discovery.port) == (HEADLESS, 8000)
    assert config.vllm.static_urls == []
    assert config.vllm.eviction == "vllm"
    assert config.vllm.health.eject_after == 3
    assert config.adapters["formal"].pinned
    assert (config.adapters["terse"].min_replicas, config.adapters["terse"].max_replicas) == (1, 2)


def test_defaults_keep_one_replica_at_the_old_url(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, {"vllm": {"model": "m"}}))
    assert config.vllm.static_urls == ["http://127.0.0.1:8000"]
    assert config.vllm.eviction == "gateway"
    assert (config.vllm.health.interval_s, config.vllm.health.timeout_s, config.vllm.health.eject_after) == (5, 2, 3)
    config = load_config(_write(tmp_path, {"vllm": {"model": "m", "replicas": ["http://a:8000/", "http://b:8000"]}}))
    assert config.vllm.static_urls == ["http://a:8000", "http://b:8000"]


def test_replicas_and_discovery_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, {"vllm": {"model": "m"}})
    monkeypatch.setenv("TURNOUT_VLLM__REPLICAS", '["http://a:8000", "http://b:8001"]')
    assert load_config(path).vllm.static_urls == ["http://a:8000", "http://b:8001"]
    monkeypatch.delenv("TURNOUT_VLLM__REPLICAS")
    monkeypatch.setenv("TURNOUT_VLLM__DISCOVERY__DNS", HEADLESS)
    config = load_config(path)
    assert config.vllm.discovery is not None
    assert config.vllm.discovery.dns == HEADLESS
    assert config.vllm.discovery.port == 8000


@pytest.mark.parametrize(
    ("vllm", "adapters", "expected"),
    [
        (
            {"url": "http://a:8000", "replicas": ["http://b:8000"]},
            {},
            "vllm: give exactly one of url, replicas and discovery, not url and replicas",
        ),
        (
            {"replicas": ["http://b:8000"], "discovery": {"dns": HEADLESS}},
            {},
            "vllm: give exactly one of url, replicas and discovery, not replicas and discovery",
        ),
        ({"replicas": []}, {}, "vllm.replicas: List should have at least 1 item"),
        (
            {"replicas": ["http://a:1", "http://a:1/"]},
            {},
            "vllm.replicas: a replica is listed more than once: http://a:1",
        ),
        ({"replicas": ["a:8000"]}, {}, "vllm.replicas[0]: 'a:8000' is not an http(s) URL"),
        ({"discovery": {"dns": "not a name"}}, {}, "vllm.discovery.dns: 'not a name' is not a DNS name"),
        ({"discovery": {"dns": HEADLESS, "scheme": "ftp"}}, {}, "vllm.discovery.scheme: "),
        ({"health": {"eject_after": 0}}, {}, "vllm.health.eject_after: Input should be greater than or equal to 1"),
        ({"eviction": "lru"}, {}, "vllm.eviction: "),
        ({}, {"a": {"path": "a", "min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) exceeds max_replicas (2)"),
        ({}, {"a": {"path": "a", "pinned": True, "max_replicas": 2}}, "a pinned adapter is on every replica"),
        (
            {"max_resident": 1},
            {"a": {"path": "a", "pinned": True}, "b": {"path": "b", "pinned": True}},
            "adapters: 2 adapters are pinned (a, b) but a replica holds at most vllm.max_resident (1)",
        ),
    ],
)
def test_problems_name_the_key(
    tmp_path: Path, vllm: dict[str, object], adapters: dict[str, object], expected: str
) -> None:
    path = _write(tmp_path, {"vllm": {"model": "m", **vllm}, "adapters": adapters})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in caught.value.problems), (
        caught.value.problems
    )


def test_as_many_pinned_adapters_as_slots_are_fine_and_vllm_eviction_has_no_such_bound(tmp_path: Path) -> None:
    adapters = {"a": {"path": "a", "pinned": True}, "b": {"path": "b", "pinned": True}}
    load_config(_write(tmp_path, {"vllm": {"model": "m", "max_resident": 2}, "adapters": adapters}))
    load_config(_write(tmp_path, {"vllm": {"model": "m", "max_resident": 1, "eviction": "vllm"}, "adapters": adapters}))


def test_the_fleet_demo_configuration_is_valid_and_declares_what_the_demo_shows() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml")
    assert config.vllm.static_urls == ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]
    assert [name for name, spec in config.adapters.items() if spec.pinned] == ["formal"]
    assert config.adapters["terse"].min_replicas == 1
