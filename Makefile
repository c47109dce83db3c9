# leadrelay: `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install dev demo test test-unit test-integration lint typecheck migrate services

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install leadrelay with its dev tools

dev: $(STAMP) ## Run the pipeline on the embedded defaults (SQLite, filesystem broker): API, worker, demo org
	$(BIN)/leadrelay dev

demo: $(STAMP) ## The same, stopping once the demo leads are printed
	$(BIN)/leadrelay dev --exit-after-demo

migrate: $(STAMP) ## Alembic migrations to head on LEADRELAY_DATABASE_URL
	$(BIN)/leadrelay db upgrade

lint: $(STAMP) ## ruff (with the rules/ purity ban) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

services: ## Start local PostgreSQL and Redis if they are down (no Docker needed)
	@pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

test-unit: $(STAMP) ## Unit tests of the rules (no services)
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) services ## Pipeline tests on real PostgreSQL, Redis and Celery workers, and the embedded mode
	$(BIN)/pytest tests/integration tests/embedded

test: lint services ## Everything CI runs: lint, unit, integration and embedded tests
	$(BIN)/pytest
