# The two commands a new user types: `make run` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv on first use and reinstall only when
# pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/digits_cvae
export NO_MKDOCS_2_WARNING := 1

.PHONY: run test test-fast lint docs bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --workdir $(WORKDIR)

# The whole suite: lint, the documentation site, then every test in two worker processes.
test: lint docs
	$(PY) -m pytest -n auto --maxprocesses=2

# The unit tier for the edit-test loop: no subprocess, no training beyond a few steps.
test-fast: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses=2 -q -m "not slow and not mnist"

# The same checks as .pre-commit-config.yaml: ruff's lint rules and its formatting.
lint: $(STAMP)
	$(PY) -m ruff check cvae experiments benchmarks tests
	$(PY) -m ruff format --check --quiet cvae experiments benchmarks tests

# The documentation site (build/site); --strict fails on a broken link or a bad docstring.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

bench: $(STAMP)
	$(PY) -m benchmarks.training --sweep

clean:
	rm -rf $(VENV) runs build
