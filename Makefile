# One entry point for developers, users and CI. `make test` is the test command the README gives.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test chaos lint typecheck check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"

test: install
	scripts/test-services
	$(BIN)/pytest

# The whole chaos matrix (docs/chaos.md), slow rows included; `make test` runs only its fast rows.
# CI runs only the rows `make test` left out: make chaos CHAOS="chaos and slow"
CHAOS ?= chaos
chaos: install
	scripts/test-services
	$(BIN)/pytest -m "$(CHAOS)" tests/chaos

# lint-imports checks the layering contracts of pyproject.toml ([tool.importlinter], docs/architecture.md).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

check: lint typecheck test
