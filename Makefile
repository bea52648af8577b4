# Two entry points for a fresh machine:
#   make demo   install into .venv, write a synthetic DICOM CT series and segment it
#   make test   install into .venv (with test tools), install the Debian tools the tests
#               use as real peers (scripts/install-system-deps.sh), run lint, types and tests
#
# TORCH_SPEC pins the torch build; the default matches the CPU build that pip finds on
# these development machines. On a GPU host set TORCH_SPEC to the CUDA build you want.

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
