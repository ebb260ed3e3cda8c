# One entry point for developers, users and CI. `make test` is the test command the README gives.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test chaos scale lint typecheck check demo airflow bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"

test: install
	scripts/test-services
	scripts/ensure-chromium
	$(BIN)/pytest

# A sandbox of 3 tenants (chaos on one), one run of servicetitan_sync through Airflow, and what it did.
# Uses the Redis at DEMO_REDIS (or starts one); works in .demo/. DEMO_ARGS="--help" lists the options.
DEMO_REDIS ?= redis://127.0.0.1:6379/8
demo: install
	$(BIN)/python scripts/demo.py demo --redis-url $(DEMO_REDIS) $(DEMO_ARGS)

# The same preparation, then a full local Airflow (UI, scheduler, dag-processor, triggerer) until Ctrl+C.
airflow: install
	$(BIN)/python scripts/demo.py airflow --redis-url $(DEMO_REDIS) $(DEMO_ARGS)

# The whole chaos matrix (docs/chaos.md), slow rows included; `make test` runs only its fast rows.
# CI runs only the rows `make test` left out: make chaos CHAOS="chaos and slow"
CHAOS ?= chaos
chaos: install
	scripts/test-services
	$(BIN)/pytest -m "$(CHAOS)" tests/chaos

# One run of servicetitan_sync over SCALE_TENANTS credentials on CeleryExecutor (two workers, four slots each),
# one tenant in outage, one rejected secret; prints and writes (SCALE_REPORT) throughput, overhead per task,
# Redis commands per credential and worker memory (tests/scale). Celery's broker: Redis database 4.
SCALE_TENANTS ?= 200
SCALE_MAX_MAP_LENGTH ?= 100
SCALE_REPORT ?= .scale/report.json
scale: install
	scripts/test-services
	SERVICETITAN_SCALE_TENANTS=$(SCALE_TENANTS) SERVICETITAN_SCALE_MAX_MAP_LENGTH=$(SCALE_MAX_MAP_LENGTH) \
		SERVICETITAN_SCALE_REPORT=$(SCALE_REPORT) $(BIN)/pytest -m scale tests/scale

# Benchmarks, ours beside a peer in the same run, as one table of ratios (benchmarks/run.py). Fails only
# when synced data differs from the sandbox's truth, never on a timing. BENCH_ARGS="--quick", "--only sync",
# "--json bench.json"; "--help" lists them.
BENCH_REDIS ?= redis://127.0.0.1:6379/7
BENCH_ARGS ?=
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	scripts/test-services
	$(BIN)/python benchmarks/run.py --redis-url $(BENCH_REDIS) $(BENCH_ARGS)

# lint-imports checks the layering contracts of pyproject.toml ([tool.importlinter], docs/architecture.md).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

check: lint typecheck test
