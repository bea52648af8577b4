# Two entry points for a fresh machine:
#   make demo   install into .venv, write a synthetic DICOM CT series and segment it
#   make test   install into .venv (with test tools), install the Debian tools the tests
#               use as real peers (scripts/install-system-deps.sh), run lint, types and tests
#
# TORCH_SPEC pins the torch version; pip finds a CPU build of it on the development
# machines. On a GPU host, install the CUDA build of that version into .venv first (see the
# README); the pin is then already met and the CUDA build stays.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip

.PHONY: install install-dev system-deps demo test lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .

install-dev: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e '.[dev]'

system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/sats demo -o sats-demo

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: system-deps lint
	$(VENV)/bin/pytest -ra
