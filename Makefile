# `make demo` and `make test` work on a fresh machine: each makes .venv and installs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/mailer demo

test: $(VENV)/.installed
	$(BIN)/ruff check mailer tests benchmarks migrations
	$(BIN)/mypy --strict mailer
	$(BIN)/lint-imports
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
