# cxr-tools: every target installs what it needs, idempotently (a second run only checks stamps).
#   make demo   – set up .venv and run the whole pipeline on the built-in synthetic dataset
#   make test   – set up .venv and run the test suite
#   make lint   – ruff + mypy
#   make bench  – the benchmarks in benchmarks/, results printed (copy them into docs/benchmarks.md)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.cxr-installed
DEMO_DIR ?= cxr-demo
PYTEST_ARGS ?=

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -e '.[dev,app,foundation,fast-png]'
	@# learn2learn 0.2.0: regenerate its Cython files (its shipped C does not build on Python >= 3.11) and
	@# install it without its numpy<2 pin (qpth); gym/scipy/tqdm/requests are what it imports.
	$(BIN)/python -c "import learn2learn" >/dev/null 2>&1 || ( \
	  $(PIP) install --quiet Cython gym scipy tqdm requests && \
	  $(PIP) install --quiet --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext )
	$(BIN)/python -c "import learn2learn, higher, torch, cxr_tools" >/dev/null 2>&1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cxr demo --output $(DEMO_DIR) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cxr_tools tests benchmarks
	$(BIN)/ruff format --check cxr_tools tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
