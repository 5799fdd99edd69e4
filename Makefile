# Two commands for a fresh machine (Python 3.11+, package index reachable):
#   make reproduce   -- local venv, install, run `spo-tabular reproduce`
#   make test        -- local venv (created or updated), install with test tools, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch 2.13.0 is the CPU-only build (small, fast to install); the declared range also admits 2.14.x.
TORCH  ?= torch==2.13.0

.PHONY: reproduce test test-fast bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

reproduce: venv
	$(BIN)/spo-tabular reproduce

test: venv
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -n 2 -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" -x

bench: venv
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
