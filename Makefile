# User-facing verbs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
BENCH ?=
# Where the browser test looks for Debian's chromium (test_ui_backfill.CHROMIUM).
CHROMIUM := /usr/bin/chromium

.PHONY: help install lock dev dev-prod demo serve mlflow reproduce materialize test test-fast soak bench bench-smoke screenshots lint format clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install the project with its dev extras

$(VENV)/.installed: pyproject.toml uv.lock
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || { echo "need $(PYTHON) with pip"; exit 1; }
	@# Exactly the versions of uv.lock, and the project itself (editable). Without uv, pip
	@# installs the same pins, hashes checked, from requirements-dev.lock (exported from uv.lock).
	@if $(PYTHON) -m pip install -q uv >/dev/null 2>&1; then \
	  UV_PROJECT_ENVIRONMENT=$(VENV) $(PYTHON) -m uv sync -q --frozen --extra dev --compile-bytecode \
	    --python $(PYTHON); \
	else \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install -q --require-hashes --no-deps -r requirements-dev.lock && \
	  $(BIN)/pip install -q --no-deps -e .; \
	fi
	@touch $@

lock:  ## after editing pyproject.toml: uv.lock, its pip export requirements-dev.lock, the Docker locks
	$(PYTHON) -m uv lock -q
	$(PYTHON) -m uv export -q --frozen --extra dev --no-emit-project -o requirements-dev.lock
	PATH="$$($(PYTHON) -c 'import os, uv; print(os.path.dirname(uv.find_uv_bin()))'):$$PATH" docker/lock.sh

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster.yaml $@

dev: install $(DAGSTER_HOME)/dagster.yaml  ## Dagster UI + daemon on http://127.0.0.1:3000 (embedded defaults)
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

demo: install $(DAGSTER_HOME)/dagster.yaml  ## the whole pipeline on 30 days x 20 generated sensors, with a summary
	PYTHONWARNINGS=ignore $(BIN)/python -m ml_platform.demo

dev-prod: install  ## production profile without Docker: PostgreSQL, S3 API, MLflow, gRPC code server, UI, daemon, API
	$(BIN)/python -m ml_platform.devstack

mlflow: install  ## MLflow UI on http://127.0.0.1:5000 over the embedded tracking store (.mlflow/)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlflow/mlflow.db --host 127.0.0.1 --port 5000

reproduce: install  ## rebuild model version MODEL_VERSION from its manifest and compare its metrics
	@test -n "$(MODEL_VERSION)" || { echo "usage: make reproduce MODEL_VERSION=<n>"; exit 2; }
	$(BIN)/python -m ml_platform reproduce --version $(MODEL_VERSION)

materialize: install  ## `dagster asset materialize` over the whole graph on a small generated data set (CI)
	.ci/materialize-graph

serve: install  ## prediction API on http://127.0.0.1:8000 (docs at /docs): champion + Feast online store
	$(BIN)/uvicorn --factory ml_platform.serving.app:create_app --host 127.0.0.1 --port 8000 --workers 1

test: install  ## all tests: unit, real S3 API (moto), PostgreSQL, Dagster daemon end to end (JOBS=2 processes)
	@# loadfile: one module per worker, the daemon modules together (conftest.py); and
	@# --no-loadscope-reorder keeps conftest's longest-first order (xdist would start the modules
	@# with the most tests first, leaving the long end-to-end modules for last).
	$(BIN)/python -m pytest -n $(or $(JOBS),2) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: install  ## the unit tests only (no server, no Dagster run): about a minute
	$(BIN)/python -m pytest -n $(or $(JOBS),2) -m unit --durations=10

soak: install  ## the daemon fault scenarios again and again (ROUNDS=5, OUTAGE_S=30) -> soak-results.json
	ML_PLATFORM_FAULT_ROUNDS=$(or $(ROUNDS),5) ML_PLATFORM_FAULT_OUTAGE_S=$(or $(OUTAGE_S),30) \
		ML_PLATFORM_FAULT_RESULTS=$(CURDIR)/soak-results.json \
		$(BIN)/python -m pytest ml_platform_tests/faults/test_faults_daemon.py -p no:cacheprovider
	@echo "measurements of every round (recovery_s, runs, retries, checksums): soak-results.json"

screenshots: install  ## the README's UI screenshots -> docs/images/ (the browser test, on Debian's chromium)
	@# Only here to take them: no chromium is an error, not the test's quiet skip (the test
	@# fails too when ML_PLATFORM_SCREENSHOTS is set and chromium is missing).
	@test -x $(CHROMIUM) || { echo "make screenshots: no $(CHROMIUM); install Debian's chromium" \
	  "(apt-get install chromium)" >&2; exit 1; }
	ML_PLATFORM_SCREENSHOTS=$(CURDIR)/docs/images $(BIN)/python -m pytest -q -p no:cacheprovider \
		ml_platform_tests/e2e/test_ui_backfill.py

bench: install  ## benchmarks -> benchmarks/results.json and RESULTS.md (BENCH=name for one)
	$(BIN)/python -m benchmarks.run $(if $(BENCH),--only $(BENCH))

bench-smoke: install  ## every benchmark on a tiny input (CI): fails if one is broken; records nothing
	$(BIN)/python -m benchmarks.run --smoke $(if $(BENCH),--only $(BENCH))

lint: install $(DAGSTER_HOME)/dagster.yaml  ## ruff lint + format check, and `dg check defs`
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

format: install  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove local state (.lake, .dagster_home, .mlflow, feature_repo/data) but keep .venv
	rm -rf .lake .dagster_home .mlflow feature_repo/data
