# `make demo` runs every demo and the verification table; `make test` runs the test suite.
# Each creates .venv when it is missing and installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 CPU: on these machines the wheel lies on the local disk
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,kernels]"
	touch $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(BIN)/fromscratch demo --out demo-output

test: $(STAMP)
	MPLBACKEND=Agg TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_layers.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
