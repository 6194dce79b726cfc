# The two commands a new user types: `make run` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv on first use, with the exact versions of
# requirements.lock, and reinstall only when pyproject.toml or the lock changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/digits_cvae
export NO_MKDOCS_2_WARNING := 1

.PHONY: run test test-fast lint typecheck docs bench notebook lock clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	# (setuptools warns about editable installs in a box of stars: nothing to act on)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-resolve the dependencies of pyproject.toml (with the dev extra) in a fresh environment
# and write their exact versions to requirements.lock.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet '.[dev]'
	{ sed -n '1,/^$$/p' requirements.lock | grep '^#'; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^cvae' \
	  | sort -f; } > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf build/lock-venv

run: $(STAMP)
	$(PY) -m experiments.main --workdir $(WORKDIR)

# The whole suite: lint, types, the documentation site, then every test in two workers.
test: lint typecheck docs
	$(PY) -m pytest -n auto --maxprocesses=2

# The unit tier for the edit-test loop: no subprocess, no training beyond a few steps.
test-fast: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses=2 -q -m "not slow and not mnist"

# ruff's lint rules and its formatting (also run by .pre-commit-config.yaml).
lint: $(STAMP)
	$(PY) -m ruff check cvae experiments benchmarks tests
	$(PY) -m ruff format --check --quiet cvae experiments benchmarks tests

# mypy over cvae/, experiments/ and benchmarks/ at the level pyproject.toml declares.
typecheck: $(STAMP)
	$(PY) -m mypy

# The documentation site (build/site); --strict fails on a broken link or a bad docstring.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet

# The notebooks in JupyterLab (installed into .venv on first use), on the quickstart's run.
notebook: $(STAMP)
	$(PY) -m pip install --quiet 'jupyterlab>=4,<5'
	CVAE_WORKDIR=$(abspath $(WORKDIR)) $(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m benchmarks.training --sweep

clean:
	rm -rf $(VENV) runs build
