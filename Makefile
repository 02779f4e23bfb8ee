# `make demo` runs every demo and the verification table; `make test` runs the test suite.
# Each creates .venv when it is missing and installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-lowest bench clean

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

# the lowest versions pyproject.toml allows: torch 2.11.0 (on x86_64 a CUDA build of about
# 5 GB, which runs on the CPU), numpy 2.0.0, and the triton torch 2.11 asks for (3.6)
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	printf 'torch==2.11.0\nnumpy==2.0.0\n' > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install -q -c $(LOWEST)/constraints.txt -e ".[dev,kernels]"
	touch $@

test-lowest: $(LOWEST)/.installed
	MPLBACKEND=Agg TRITON_INTERPRET=1 $(LOWEST)/bin/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_layers.py

clean:
	rm -rf $(VENV) $(LOWEST) demo-output .pytest_cache .hypothesis
