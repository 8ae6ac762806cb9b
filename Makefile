# Two commands for a fresh machine: `make demo` and `make test` (ruff, mypy --strict, pytest).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup demo test mutate clean

setup: $(STAMP)

# pyproject.toml holds ranges; constraints.txt the exact tested versions (torch 2.14.1 and
# torchvision 0.29.1 from this machine's disk). Re-installs when either changed (or the venv is
# missing).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/mladv demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Mutation testing of the modules that produce numbers (about 30 min on 2 cores; not in `test`):
# mutmut once per module with that module's tests, report in docs/mutation.md.
$(VENV)/.mutate-installed: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,mutate]'
	touch $@

mutate: $(VENV)/.mutate-installed
	nice -n 19 $(BIN)/python benchmarks/mutate.py $(MODULES)

clean:
	rm -rf runs .pytest_cache build/mutate
