# The two commands a new user types: `make run` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv on first use and reinstall only when
# pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/digits_cvae

.PHONY: run test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m ruff check cvae experiments tests
	$(PY) -m pytest -n auto --maxprocesses=2

bench: $(STAMP)
	$(PY) -m experiments.bench --sweep

clean:
	rm -rf $(VENV) runs
