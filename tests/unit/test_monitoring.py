"""The monitoring assets: the Grafana dashboard, the Prometheus alert rules, their unit tests, the example
Prometheus configuration, and the harness that runs a real Prometheus for end-to-end tests.

Grafana does not run here, so the dashboard is checked the way it can be: every PromQL expression it
holds is parsed by promtool (as a recording rule), and every metric it names must be one the gateway
exposes. The Replicas row is also queried on a real Prometheus scraping the gateway's own exposition,
with the alert rules loaded. promtool comes from Debian's ``prometheus`` package, which ``make test``
installs: a missing binary fails these tests rather than skipping them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.metrics import Metrics
from tests.support.prometheus import PrometheusServer, Result

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "turnout-dashboard.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"

EXPECTED_ALERTS = {
    "TurnoutHighErrorRate",
    "TurnoutHighP99Latency",
    "TurnoutHighGatewayOverhead",
    "TurnoutCostBurnRate",
    "TurnoutAdapterLoadFailures",
    "TurnoutEmptyRetrievals",
    "TurnoutReplicaDown",
    "TurnoutNoHealthyReplica",
    "TurnoutReplicaEjections",
    "TurnoutDiscoveryFailing",
    "TurnoutCircuitOpen",
}

# What Grafana substitutes before sending a query: durations where PromQL needs a duration, and a
# match-everything regex for the template variables (used with =~).
GRAFANA_DURATIONS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
METRIC_NAME = re.compile(r"turnout_[a-z0-9_]+")
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


# ---------------------------------------------------------------- helpers


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH. It comes with Debian's `prometheus` package: run `make tools` "
            "(or `apt-get install -y --no-install-recommends prometheus`).",
            pytrace=False,
        )
    return path


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def load_dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard["panels"]) if panel.get("type") != "row"]


def row_panels(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The content panels of the row titled ``title``: those inside it when it is collapsed, else those that
    follow it up to the next row."""
    panels: list[dict[str, Any]] = dashboard["panels"]
    (start,) = [i for i, panel in enumerate(panels) if panel.get("type") == "row" and panel.get("title") == title]
    row = panels[start]
    if row.get("collapsed"):
        return list(row.get("panels", []))
    following: list[dict[str, Any]] = []
    for panel in panels[start + 1 :]:
        if panel.get("type") == "row":
            break
        following.append(panel)
    return following


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query)


def dashboard_promql(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression: panel targets and template-variable queries.

    Variable queries in Grafana's own functions are reduced to the PromQL they hold: the selector of
    ``label_values(selector, label)``, the expression of ``query_result(expr)``; ``label_values(label)``,
    ``label_names()`` and ``metrics(...)`` hold none.
    """
    found: list[tuple[str, str]] = []
    for panel in content_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        where = f"variable {variable.get('name')!r}"
        if match := LABEL_VALUES.match(query):
            found.append((where, match["selector"]))
        elif match := QUERY_RESULT.match(query):
            found.append((where, match["expr"]))
        elif query and not re.match(r"^\s*(label_values|label_names|metrics)\(", query):
            found.append((where, query))
    return found


def substitute_grafana_variables(expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        return GRAFANA_DURATIONS.get(name, ".*")

    return GRAFANA_VARIABLE.sub(replace, expr)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def exposed_series_names() -> set[str]:
    """Every series name the gateway can expose, from the ``# TYPE`` lines of its own exposition."""
    names: set[str] = set()
    for line in Metrics().exposition().decode().splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, family, kind = line.split()
        if kind == "counter":
            base = family.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "histogram":
            names |= {family, f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
        elif kind == "summary":
            names |= {family, f"{family}_sum", f"{family}_count", f"{family}_created"}
        else:
            names.add(family)
    return names


def referenced_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over the dashboard, the alert rules and their unit tests' series."""
    uses: dict[str, set[str]] = {}
    sources = [(f"dashboard {where}", expr) for where, expr in dashboard_promql(load_dashboard())]
    sources += [(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"]) for rule in alert_rules()]
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    for group in tests["tests"]:
        for series in group.get("input_series", []):
            sources.append((f"alerts.test.yml {group.get('name')!r}", series["series"]))
    for where, text in sources:
        for name in METRIC_NAME.findall(text):
            uses.setdefault(name, set()).add(where)
    return uses


# ---------------------------------------------------------------- dashboard


def test_every_dashboard_expression_parses_with_promtool(tmp_path: Path) -> None:
    expressions = dashboard_promql(load_dashboard())
    assert len(expressions) >= 30, f"expected the dashboard's queries, found {len(expressions)}"
    rules = [
        {"record": f"dashboard:expr_{index}", "expr": substitute_grafana_variables(expr)}
        for index, (_, expr) in enumerate(expressions)
    ]
    leftover = [rule["expr"] for rule in rules if "$" in rule["expr"]]
    assert not leftover, f"Grafana variables left unsubstituted: {leftover}"
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    result = run_promtool("check", "rules", rules_file)
    index = "\n".join(f"dashboard:expr_{i}: {where}" for i, (where, _) in enumerate(expressions))
    assert result.returncode == 0, f"promtool rejected a dashboard query:\n{result.stdout}\n{result.stderr}\n{index}"


def test_panels_inside_collapsed_rows_are_found() -> None:
    dashboard: dict[str, Any] = {
        "panels": [
            {
                "id": 1,
                "type": "row",
                "collapsed": True,
                "panels": [{"id": 2, "targets": [{"expr": "up", "refId": "A"}]}],
            },
            {"id": 3, "type": "stat", "targets": [{"expr": "vector(1)", "refId": "A"}]},
        ],
        "templating": {"list": [{"type": "query", "name": "v", "query": {"query": 'label_values(up{job=~"$j"}, x)'}}]},
    }
    assert [panel["id"] for panel in all_panels(dashboard["panels"])] == [1, 2, 3]
    assert [expr for _, expr in dashboard_promql(dashboard)] == ["up", "vector(1)", 'up{job=~"$j"}']


def test_grafana_variables_are_substituted_with_parseable_values() -> None:
    expr = 'sum(rate(m{a=~"$policy", b=~"${route_kind}", c=~"${x:regex}", d=~"[[y]]"}[$__rate_interval]))'
    assert substitute_grafana_variables(expr) == 'sum(rate(m{a=~".*", b=~".*", c=~".*", d=~".*"}[5m]))'
    assert substitute_grafana_variables("increase(m[$__range])[${__interval}]") == "increase(m[1h])[1m]"


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("uid")
    assert dashboard.get("title")

    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("policy", "route_kind"):
        assert variables[name]["type"] == "query"
        assert "label_values(turnout_requests_total" in variable_query(variables[name])
        assert variables[name]["datasource"]["uid"] == "${datasource}"

    every = list(all_panels(dashboard["panels"]))
    ids: list[object] = [panel.get("id") for panel in every]
    assert all(isinstance(panel_id, int) for panel_id in ids), f"panels without an integer id: {ids}"
    duplicates = sorted({str(panel_id) for panel_id in ids if ids.count(panel_id) > 1})
    assert not duplicates, f"panel ids used more than once: {duplicates}"

    panels = content_panels(dashboard)
    assert panels, "the dashboard has no panels"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel.get("description"), f"panel {title!r} has no description"
        assert panel.get("datasource", {}).get("uid") == "${datasource}", f"panel {title!r}: no ${{datasource}}"
        assert panel.get("targets"), f"panel {title!r} has no queries"
        for target in panel["targets"]:
            assert target.get("expr"), f"panel {title!r} has a target without an expression"
            assert target.get("datasource", {}).get("uid") == "${datasource}", f"panel {title!r}: target datasource"
            if "rate(" in target["expr"] and "[$__range]" not in target["expr"]:
                assert "$__rate_interval" in target["expr"], f"panel {title!r}: rate() without $__rate_interval"


def _exprs(panel: dict[str, Any]) -> str:
    return "\n".join(target.get("expr", "") for target in panel.get("targets", []))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


TOPICS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "latency": lambda p: "histogram_quantile" in _exprs(p) and "turnout_request_duration_seconds_bucket" in _exprs(p),
    "overhead": lambda p: "turnout_gateway_overhead_seconds" in _exprs(p),
    "TTFT": lambda p: "turnout_time_to_first_token_seconds" in _exprs(p),
    "traffic split by route": lambda p: (
        "turnout_requests_total" in _exprs(p) and "sumby(route_kind,target)" in _squash(_exprs(p))
    ),
    "dollars per route": lambda p: (
        "sumby(route_kind,target)(rate(turnout_cost_dollars_total" in _squash(_exprs(p))
        and "*3600" in _squash(_exprs(p))
    ),
    "dollars per 1k requests": lambda p: (
        "turnout_cost_dollars_total" in _exprs(p)
        and "turnout_requests_total" in _exprs(p)
        and "*1000" in _squash(_exprs(p))
    ),
    "adapter residency": lambda p: "turnout_adapter_resident" in _exprs(p),
    "adapter loads": lambda p: "turnout_adapter_loads_total" in _exprs(p),
    "retrieval health": lambda p: (
        "turnout_retrieval_empty_total" in _exprs(p) or "turnout_retrieval_degraded_total" in _exprs(p)
    ),
    "healthy replicas": lambda p: "turnout_replica_healthy" in _exprs(p) and "count(" in _exprs(p),
    "health per replica": lambda p: "by(replica)(turnout_replica_healthy)" in _squash(_exprs(p)),
    "in flight per replica": lambda p: "sumby(replica)(turnout_replica_in_flight_requests)" in _squash(_exprs(p)),
    "ejections per replica": lambda p: "sumby(replica)(increase(turnout_replica_ejections_total" in _squash(_exprs(p)),
    "adapter loads per replica": lambda p: (
        "sumby(replica,outcome)(rate(turnout_adapter_loads_total" in _squash(_exprs(p))
    ),
    "adapters resident per replica": lambda p: (
        "sumby(replica)" in _squash(_exprs(p)) and "turnout_adapter_resident" in _exprs(p)
    ),
    "discovery failures": lambda p: "turnout_discovery_failures_total" in _exprs(p),
    "shadow arms": lambda p: "sumby(arm,outcome)(rate(turnout_shadow_requests_total" in _squash(_exprs(p)),
    "shadow agreement": lambda p: "turnout_shadow_agreement_bucket" in _exprs(p),
}


def test_dashboard_covers_every_topic() -> None:
    panels = content_panels(load_dashboard())
    missing = [topic for topic, covers in TOPICS.items() if not any(covers(panel) for panel in panels)]
    assert not missing, f"no dashboard panel covers: {missing}"


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()["panels"]):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] <= 24 - grid["w"], f"{where} is wider than the dashboard: {grid}"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{where} overlaps {taken[(x, y)]}"
                taken[(x, y)] = where


def test_replicas_row_holds_the_fleet_panels() -> None:
    panels = row_panels(load_dashboard(), "Replicas")
    names = {"turnout_replica_healthy", "turnout_replica_in_flight_requests", "turnout_replica_ejections_total"}
    names |= {"turnout_discovery_failures_total", "turnout_adapter_loads_total", "turnout_adapter_resident"}
    used = {name for panel in panels for name in METRIC_NAME.findall(_exprs(panel))}
    assert names <= used, f"the Replicas row does not show {sorted(names - used)}"


# ---------------------------------------------------------------- alert rules


def test_alert_rules_pass_promtool_check() -> None:
    assert_ok(run_promtool("check", "rules", ALERTS))


def test_alert_rules_unit_tests_pass() -> None:
    assert_ok(run_promtool("test", "rules", ALERTS_TEST))


def test_every_alert_is_documented_and_tested() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules() if "alert" in rule}
    assert set(alerts) == EXPECTED_ALERTS
    for name, rule in alerts.items():
        assert "for" in rule, f"{name} has no for:"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, f"{name}: severity"
        assert {"summary", "description"} <= set(rule.get("annotations", {})), f"{name}: annotations"

    tests = yaml.safe_load(ALERTS_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing >= EXPECTED_ALERTS, f"alerts without a firing case: {sorted(EXPECTED_ALERTS - firing)}"
    assert quiet >= EXPECTED_ALERTS, f"alerts without a must-not-fire case: {sorted(EXPECTED_ALERTS - quiet)}"


# ---------------------------------------------------------------- metric names


def test_every_referenced_metric_is_exposed_by_the_gateway() -> None:
    exposed = exposed_series_names()
    assert "turnout_requests_total" in exposed, "the exposition lost its request counter?"
    uses = referenced_metric_names()
    assert len(uses) >= 15, f"expected the dashboard and rules to use the gateway's metrics, found {sorted(uses)}"
    unknown = {name: sorted(where) for name, where in sorted(uses.items()) if name not in exposed}
    report = "\n".join(f"  {name}: used in {', '.join(where)}" for name, where in unknown.items())
    assert not unknown, f"metric names the gateway does not expose:\n{report}\nexposed: {sorted(exposed)}"


# ---------------------------------------------------------------- example Prometheus configuration


def test_example_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["turnout"]["metrics_path"] == "/metrics"
    # Checked in a directory of its own with the rules beside it, as an operator would deploy it.
    shutil.copyfile(EXAMPLE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copyfile(ALERTS, tmp_path / "alerts.yml")
    assert_ok(run_promtool("check", "config", tmp_path / "prometheus.yml"))


# ---------------------------------------------------------------- the real-Prometheus harness

PROBE_EXPOSITION = b"""# HELP monitoring_probe_total A counter served to prove the Prometheus harness scrapes.
# TYPE monitoring_probe_total counter
monitoring_probe_total{probe="harness"} 42.0
"""


class _ExpositionServer(ThreadingHTTPServer):
    """Serves ``exposition()`` on GET /metrics, read afresh at every scrape."""

    def __init__(self, exposition: Callable[[], bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _ExpositionHandler)
        self.exposition = exposition


class _ExpositionHandler(BaseHTTPRequestHandler):
    server: _ExpositionServer

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = self.server.exposition()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass


@contextlib.contextmanager
def serving(exposition: Callable[[], bytes]) -> Iterator[str]:
    """An HTTP server on loopback answering GET /metrics with ``exposition()``; yields its host:port."""
    server = _ExpositionServer(exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def exposition_server() -> Iterator[str]:
    with serving(lambda: PROBE_EXPOSITION) as address:
        yield address


def test_prometheus_harness_scrapes_a_local_target(exposition_server: str, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found on PATH: run `make tools` (Debian's prometheus package)", pytrace=False)

    def has_probe(result: Result) -> bool:
        return len(result) == 1 and float(result[0]["value"][1]) == 42.0

    with PrometheusServer([exposition_server], workdir=tmp_path / "prometheus") as prometheus:
        result = prometheus.wait_for('monitoring_probe_total{probe="harness"}', has_probe, timeout_s=30)
        assert result[0]["metric"]["job"] == "turnout"
        assert result[0]["metric"]["instance"] == exposition_server
        prometheus.wait_for("up", lambda r: len(r) == 1 and r[0]["value"][1] == "1", timeout_s=10)
        assert prometheus.targets_healthy()
        with pytest.raises(AssertionError, match="did not satisfy"):
            prometheus.wait_for("absent_metric_name", lambda r: len(r) > 0, timeout_s=0.5)
        process = prometheus.process
        assert process is not None
    assert process.poll() is not None, "stop() left prometheus running"


# ---------------------------------------------------------------- the Replicas row on a real Prometheus

HEALTHY, EJECTED = "10.0.0.1:8000", "10.0.0.2:8000"


def _gateway_with_two_replicas() -> Metrics:
    """The gateway's own metrics with two vLLM replicas: one healthy with 3 requests in flight and 2 adapters
    loaded, one ejected."""
    metrics = Metrics()
    adapters = ["formal", "terse"]
    for replica in (HEALTHY, EJECTED):
        metrics.declare_replica(replica, adapters)
    metrics.watch_replicas(lambda: [(HEALTHY, 3, True), (EJECTED, 0, False)])
    for adapter in adapters:
        metrics.adapter_resident.labels(adapter, HEALTHY).set(1)
    return metrics


def _by_replica(result: Result) -> dict[str, float]:
    return {sample["metric"].get("replica", ""): float(sample["value"][1]) for sample in result}


def test_replicas_row_and_fleet_alerts_on_a_real_prometheus(tmp_path: Path) -> None:
    """Every query of the Replicas row returns series, with the figures the gateway exposes, from a real
    Prometheus scraping the gateway's own exposition; the fleet alerts go pending on the same scrapes."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found on PATH: run `make tools` (Debian's prometheus package)", pytrace=False)
    panels = row_panels(load_dashboard(), "Replicas")
    queries = {
        (panel["title"], target["refId"]): substitute_grafana_variables(target["expr"])
        for panel in panels
        for target in panel["targets"]
    }
    assert len(queries) >= 7, f"expected the Replicas row's queries, found {sorted(queries)}"
    metrics = _gateway_with_two_replicas()

    with (
        serving(metrics.exposition) as address,
        PrometheusServer([address], workdir=tmp_path / "prometheus", rule_files=[ALERTS]) as prometheus,
    ):
        prometheus.wait_for(f'turnout_replica_healthy{{replica="{EJECTED}"}}', lambda r: len(r) == 1)
        # What happens after the first scrape, so that rate() and increase() see it.
        for _ in range(3):
            metrics.replica_ejections.labels(EJECTED).inc()
        metrics.adapter_loads.labels("formal", "success", HEALTHY).inc(2)
        metrics.discovery_failures.inc()

        for expr in queries.values():  # a query that never moves fails with its expression and last result
            prometheus.wait_for(expr, lambda r: any(float(sample["value"][1]) > 0 for sample in r), timeout_s=30)

        def panel_query(title: str, ref: str = "A") -> Result:
            return prometheus.query(queries[(title, ref)])

        assert float(panel_query("Healthy replicas", "A")[0]["value"][1]) == 1
        assert float(panel_query("Healthy replicas", "B")[0]["value"][1]) == 2
        assert _by_replica(panel_query("Replica health")) == {HEALTHY: 1, EJECTED: 0}
        assert _by_replica(panel_query("Requests in flight per replica")) == {HEALTHY: 3, EJECTED: 0}
        assert _by_replica(panel_query("Adapters resident per replica")) == {HEALTHY: 2, EJECTED: 0}
        loads = panel_query("Adapter loads by replica")
        moved = {(s["metric"]["replica"], s["metric"]["outcome"]) for s in loads if float(s["value"][1]) > 0}
        assert moved == {(HEALTHY, "success")}
        ejections = {replica for replica, value in _by_replica(panel_query("Replica ejections")).items() if value > 0}
        assert ejections == {EJECTED}
        (discovery,) = panel_query("Discovery failures")
        assert discovery["metric"]["instance"] == address

        # The rules evaluate on the same scrapes: each fleet alert that should is pending (their for: has
        # not passed), TurnoutNoHealthyReplica is not (one replica is healthy).
        def pending(result: Result) -> set[tuple[str, str]]:
            return {(s["metric"]["alertname"], s["metric"].get("replica", "")) for s in result}

        expected = {("TurnoutReplicaDown", EJECTED), ("TurnoutReplicaEjections", EJECTED)}
        expected.add(("TurnoutDiscoveryFailing", ""))
        alerts = prometheus.wait_for('ALERTS{alertstate="pending"}', lambda r: pending(r) >= expected)
        assert pending(alerts) == expected
        assert prometheus.query('ALERTS{alertname="TurnoutNoHealthyReplica"}') == []
