# Two commands (see README): `make run` sets everything up and runs the main job,
# `make test` sets everything up and runs the whole test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# qm9, lightning, hf: the QM9 data and the integrations, so their tests run instead of skipping.
	$(BIN)/pip install --quiet -e ".[test,cli,bench,qm9,lightning,hf]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/mtl-fast info
	$(BIN)/mtl-fast bench --quick

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q
	# The benchmark suites run once on the smoke tier so they keep working.
	$(BIN)/pytest -q benchmarks --benchmark-disable

clean:
	rm -rf $(VENV) build *.egg-info mtl_fast/_C*.so .pytest_cache .ruff_cache .hypothesis
