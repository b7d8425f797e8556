# quasr: the few commands everyone runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip

.PHONY: setup demo test bench cuda-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is installed first (pinned CPU build), then the package without build isolation so the
# extension builds against that torch instead of pulling a CUDA build into an isolated env.
setup: $(BIN)/python
	$(PIP) install -q torch==2.13.0 setuptools wheel ninja
	$(PIP) install -q --no-build-isolation -e '.[models,test]'
	$(PIP) install -q --no-deps useful-moonshine-onnx==20251121

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/quasr demo --bits 4 --group-size 128

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/gemm.py

# Compile-check every CUDA source (nothing CUDA runs on CPU machines).
cuda-check:
	@for f in $$(find csrc/cuda -name '*.cu'); do echo "nvcc $$f"; nvcc -arch=sm_90 -std=c++17 -c $$f -o /tmp/quasr_cuda_check.o || exit 1; done

clean:
	rm -rf build *.egg-info python/quasr/_C*.so
