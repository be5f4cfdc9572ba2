# make demo   set up .venv and train the embedded default (python-stdlib, ~6 min on 2 CPU cores)
# make test   set up .venv and run the test suite, both tiers (what CI runs)
# make test-fast  set up .venv and run the fast tier only: tests/unit (pure functions and in-process tests)
# make bench  the benchmark table (docs/performance.md), written to bench/results.json
# make gpu-check  on a new GPU machine, first: each speed switch's tokens/s, MFU and memory, GPU vs CPU loss
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test test-fast test-slow bench gpu-check clean

$(BIN)/hf-clm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel of torch first, so nothing below pulls a CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/hf-clm
	$(BIN)/hf-clm train

test: $(BIN)/hf-clm
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/hf-clm
	$(BIN)/python -m pytest -q tests/unit

test-slow: $(BIN)/hf-clm
	$(BIN)/python -m pytest -q -m slow

bench: $(BIN)/hf-clm
	$(BIN)/python -m bench

gpu-check: $(BIN)/hf-clm
	$(BIN)/python -m bench --gpu

clean:
	rm -rf $(VENV) runs
