"""A real Prometheus server, started as a subprocess, scraping given targets for end-to-end tests.

The binary comes from Debian's ``prometheus`` package (``make tools`` installs it). Each server gets its
own configuration, TSDB directory and log file under a work directory, listens on loopback only, and
scrapes every second, so a test waits a couple of seconds, not minutes, for its first samples.

    with PrometheusServer(["127.0.0.1:8080"]) as prom:
        prom.wait_for("turnout_requests_total", lambda result: len(result) > 0)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import localstack
import yaml

Result = list[dict[str, Any]]


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or refused a query."""


class PrometheusServer:
    """A Prometheus process scraping ``targets`` (``host:port``) at ``metrics_path`` every ``scrape_interval``.

    ``workdir`` holds the configuration, the TSDB and the log; when none is given a temporary directory is
    made and removed again by :meth:`stop`. ``rule_files`` are copied next to the configuration, so a test
    can load ``deploy/prometheus/alerts.yml`` and watch its alerts against real scrapes.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        workdir: Path | None = None,
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        binary: str = "prometheus",
        job: str = "turnout",
    ) -> None:
        self.targets = list(targets)
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval
        self.rule_files = list(rule_files)
        self.binary = binary
        self.job = job
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="prometheus-")) if workdir is None else workdir
        self.config_path = self.workdir / "prometheus.yml"
        self.storage_path = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The configuration written for the server (rule files by their copied names)."""
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [path.name for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> PrometheusServer:
        """Start the server and wait until ``/-/ready`` answers 200.

        The port is picked free just before the start, so another process may take it first; a server
        that exits at start is retried on a new port, up to ``attempts`` times.
        """
        executable = shutil.which(self.binary)
        if executable is None:
            raise PrometheusError(
                f"{self.binary!r} not found on PATH: install Debian's prometheus package (`make tools`)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        for rule_file in self.rule_files:
            shutil.copyfile(rule_file, self.workdir / rule_file.name)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        for attempt in range(1, attempts + 1):
            self.port = localstack.free_port()
            log = self.log_path.open("ab")
            try:
                self.process = subprocess.Popen(
                    [
                        executable,
                        f"--config.file={self.config_path}",
                        f"--storage.tsdb.path={self.storage_path}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            finally:
                log.close()
            if self._wait_ready(timeout_s):
                return self
            exited = self.process.poll() is not None
            self._terminate()
            if not exited or attempt == attempts:
                break
        raise PrometheusError(f"prometheus did not become ready on {self.url} in {timeout_s} s:\n{self.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        """Poll ``/-/ready`` until 200 (True), the process exits or the deadline passes (False)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)  # polling for start-up, not a timing assertion
        return False

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an API path and return its ``data``; a Prometheus error (bad query...) raises PrometheusError."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422/503 carry a JSON error body
            try:
                body = json.loads(error.read())
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {error.code}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> Result:
        """Evaluate ``promql`` now (``/api/v1/query``) and return its samples.

        Vectors come back as Prometheus gives them: ``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``;
        a scalar or string result comes back as one sample with no labels, so callers see one shape.
        """
        data = self._api("/api/v1/query", {"query": promql})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def wait_for(
        self, promql: str, predicate: Callable[[Result], bool], timeout_s: float = 30.0, interval_s: float = 0.2
    ) -> Result:
        """Poll ``promql`` until ``predicate(result)`` holds and return that result.

        On timeout, raise AssertionError with the last result (or the last query error), so a failing test
        shows what Prometheus actually had.
        """
        deadline = time.monotonic() + timeout_s
        last: Result | str = "(not queried)"
        while True:
            try:
                result = self.query(promql)
            except (PrometheusError, urllib.error.URLError, OSError) as error:
                last = f"query failed: {error}"
            else:
                if predicate(result):
                    return result
                last = result
            if time.monotonic() >= deadline:
                raise AssertionError(f"{promql!r} did not satisfy the predicate within {timeout_s} s; last: {last!r}")
            time.sleep(interval_s)

    def targets_status(self) -> list[dict[str, Any]]:
        """The active scrape targets, as ``/api/v1/targets`` describes them (health, lastError, labels...)."""
        data = self._api("/api/v1/targets", {"state": "active"})
        return list(data["activeTargets"])

    def targets_healthy(self) -> bool:
        """True when every configured target has been scraped and its last scrape succeeded."""
        active = self.targets_status()
        return len(active) == len(self.targets) and all(target["health"] == "up" for target in active)

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop), and remove the work directory if it made it."""
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PrometheusServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["PrometheusError", "PrometheusServer", "Result"]
