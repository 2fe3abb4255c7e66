# Two commands (see README): `make run` sets everything up and runs the main job,
# `make test` sets everything up and runs the whole test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean docs browser

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# qm9, lightning, hf: the QM9 data and the integrations, so their tests run instead of skipping;
	# docs: the documentation toolchain (make docs; Sphinx 9 needs Python >= 3.11).
	$(BIN)/pip install --quiet -e ".[test,cli,bench,qm9,lightning,hf,docs]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/mtl-fast info
	$(BIN)/mtl-fast bench --quick

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (docs/, Sphinx): every warning is an error.
DOCS_HTML := docs/_build/html
docs: setup
	$(BIN)/sphinx-build -W --keep-going -E -q -b html docs $(DOCS_HTML)

# Headless Chromium for the docs render test (tests/docs/test_site.py), from Debian's packages
# when absent; where it cannot be installed (not root, no apt) that test says so and skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium not installed: tests/docs/test_site.py will skip its browser checks"

test: setup lint docs browser
	MTL_FAST_DOCS_HTML=$(DOCS_HTML) $(BIN)/pytest -q
	# The benchmark suites run once on the smoke tier so they keep working.
	$(BIN)/pytest -q benchmarks --benchmark-disable

clean:
	rm -rf $(VENV) build *.egg-info mtl_fast/_C*.so .pytest_cache .ruff_cache .hypothesis
