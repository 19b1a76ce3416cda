# Every target bootstraps .venv from pyproject.toml when it is missing or older.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench e2e clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Optuna's own tests (in its sdist, not its wheel), run on studyhall's storage by
# tests/storage/test_optuna_upstream.py; fetched once per Optuna version.
OPTUNA_TESTS := $(VENV)/optuna-tests/.fetched
$(OPTUNA_TESTS): $(STAMP)
	rm -rf $(VENV)/optuna-tests && mkdir -p $(VENV)/optuna-tests
	v=$$($(BIN)/python -c "import optuna; print(optuna.__version__)") && \
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: "optuna==$$v" -d $(VENV)/optuna-tests && \
	tar xzf $(VENV)/optuna-tests/optuna-$$v.tar.gz -C $(VENV)/optuna-tests optuna-$$v/tests optuna-$$v/pyproject.toml
	@touch $@

demo: $(STAMP)
	$(BIN)/studyhall demo

# Two pytest-xdist workers (most tests wait on processes, servers or databases); the tests that
# make network namespaces share one worker (xdist_group, --dist loadgroup). Optuna's own suite
# runs beside them, started by the controller (tests/conftest.py). `make test XDIST=` runs
# everything in one pytest process.
XDIST ?= -n 2 --dist loadgroup

test: $(STAMP) $(OPTUNA_TESTS)
	$(BIN)/python -m pytest -q $(XDIST)

# The unit-level tests while you work (about a minute on 2 cores): SQLite only; no integration, slow
# or browser tests, and no cases on PostgreSQL or MariaDB (make test runs all of them).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x $(XDIST) -m "not slow and not integration and not e2e and not server"

# The packages pass mypy --strict; everything passes ruff and is ruff-formatted (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check storage bridge optimizer tests benchmarks examples studyhall
	$(BIN)/ruff format --check storage bridge optimizer tests benchmarks examples studyhall
	$(BIN)/mypy

# The browser end-to-end test (the demo's telemetry as optuna-dashboard renders it in
# headless chromium); installs Debian's chromium when it is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
e2e: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }
	$(BIN)/python -m pytest -q -m e2e tests/integration/test_dashboard_e2e.py

bench: $(STAMP)
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) studyhall.db studyhall.db-wal studyhall.db-shm
