# leadrelay: `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# RabbitMQ answers when its AMQP port accepts a connection.
RABBITMQ_UP := $(PY) -c 'import socket; socket.create_connection(("127.0.0.1", 5672), 1).close()' 2>/dev/null
# The pipeline tests once more with RabbitMQ as the broker of the workers and the API.
AMQP_TEST_URL ?= amqp://guest:guest@127.0.0.1:5672//
PIPELINE_ON_RABBITMQ := LEADRELAY_TEST_BROKER_URL=$(AMQP_TEST_URL) $(BIN)/pytest tests/integration/test_pipeline.py -p no:cacheprovider -q

.DEFAULT_GOAL := help
.PHONY: help install dev demo test test-unit test-integration lint docs docs-build docs-generate migrate services bench

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install leadrelay with its dev tools

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

dev: $(STAMP) ## Run the pipeline on the embedded defaults (SQLite, filesystem broker): API, worker, demo org
	$(BIN)/leadrelay dev

demo: $(STAMP) ## The same, stopping once the demo leads are printed
	$(BIN)/leadrelay dev --exit-after-demo

migrate: $(STAMP) ## Alembic migrations to head on LEADRELAY_DATABASE_URL
	$(BIN)/leadrelay db upgrade

lint: $(STAMP) ## ruff (with the rules/ purity ban), mypy --strict and the layers (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

docs: $(STAMP) ## Serve the manual (docs/, mkdocs.yml) on http://127.0.0.1:8001, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: $(STAMP) ## Build the manual strictly into site/ (a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

docs-generate: $(STAMP) ## Write the generated pages again: configuration, API reference, permissions
	$(BIN)/python -m leadrelay.docgen
	$(BIN)/python -m tests.support.permission_matrix

services: ## Start local PostgreSQL, Redis and RabbitMQ if they are down (no Docker needed)
	@pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@$(RABBITMQ_UP) || { rabbitmq-server -detached; \
		for i in $$(seq 90); do $(RABBITMQ_UP) && break; sleep 1; done; \
		$(RABBITMQ_UP) || { echo "RabbitMQ did not start on 127.0.0.1:5672" >&2; exit 1; }; }

test-unit: $(STAMP) ## Unit tests of the rules (no services)
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) services ## Pipeline tests on real PostgreSQL, Redis (then RabbitMQ) and Celery workers, and the embedded mode
	$(BIN)/pytest tests/integration tests/embedded
	$(PIPELINE_ON_RABBITMQ)

test: lint docs-build services ## Everything CI runs: lint, the manual, unit, integration and embedded tests, then the pipeline on RabbitMQ
	$(BIN)/pytest
	$(PIPELINE_ON_RABBITMQ)

bench: $(BENCH_STAMP) services ## Every benchmark scenario against its baseline (about 16 min): bench/results/<date>.json, .md, .png
	$(BIN)/python -m bench.run $(BENCH_ARGS)
