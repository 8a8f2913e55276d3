# pbx-controller: one target per entry point. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help setup system-packages asterisk demo test unit integration lint bench clean

help:
	@echo "make setup      venv with the project and its dev tools, plus sipp"
	@echo "make asterisk   build (once) or find the sandbox Asterisk 22"
	@echo "make demo       sandbox Asterisk + SQLite + controller + real SIP calls"
	@echo "make test       lint, then every test (real Asterisk, PostgreSQL and SQLite)"
	@echo "make lint       ruff, and mypy (strict on pbx_controller/core)"
	@echo "make bench      benchmarks; each ends with one JSON line"

setup: $(STAMP) system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

system-packages:
	@bash scripts/system-packages.sh

asterisk:
	@bash scripts/asterisk-sandbox.sh

demo: setup asterisk
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pbx_controller/core
	$(BIN)/mypy pbx_controller

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: setup asterisk
	$(BIN)/pytest tests/integration -q

test: setup asterisk lint
	$(BIN)/pytest -q

bench: setup asterisk
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var demo-out
