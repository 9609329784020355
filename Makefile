# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test lint clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv --copies $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,gridengine,dashboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dcflow demo --config config.yaml

test: $(STAMP)
	scripts/run-tests $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

clean-demo:
	rm -rf results/demo
